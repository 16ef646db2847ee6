"""vLLM's ``structured_outputs`` and legacy ``guided_*`` fields through the ``openai`` SDK against a real
``lorafleet serve``: choice and regex outputs conform over 50 sampled prompts each (one batched request per
field spelling), a grammar-constrained output parses with the grammar's own parser, and each misuse is a 400
naming its field."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from openai import BadRequestError, OpenAI

pytestmark = pytest.mark.timeout(300)

SUBJECTS = ("the sea", "a cat", "winter", "a city", "music", "bread", "a robot", "the moon", "rain", "a forest")
STARTS = ("Is it true that", "Do you like", "Would you say", "Answer briefly about", "Tell me whether")
PROMPTS = [f"{s} {t}?" for s in STARTS for t in SUBJECTS]  # 50
CHOICES = ["yes", "no", "maybe", "It depends on the weather"]
REGEX = r"[0-9]{3}-[A-Z]{2}( ok)?"

#: at most three terms of small numbers, a term possibly one parenthesized operation (a finite language, so
#: greedy decoding cannot loop until max_tokens); its parser below is the grammar, rule by rule
ARITHMETIC = """root ::= term | term op term | term op term op term
term ::= num | "(" num op num ")"
op ::= " + " | " - " | " * "
num ::= [1-9] | [1-9] [0-9]
"""
NUM = re.compile(r"[1-9][0-9]?")
OPS = (" + ", " - ", " * ")


def parse_arithmetic(text: str) -> None:
    """Recursive descent over ARITHMETIC; raises ValueError unless ``text`` is exactly one ``root``."""
    pos = 0

    def eat(s: str) -> bool:
        nonlocal pos
        if text.startswith(s, pos):
            pos += len(s)
            return True
        return False

    def op() -> bool:
        return any(eat(o) for o in OPS)

    def num() -> None:
        nonlocal pos
        m = NUM.match(text, pos)
        if m is None:
            raise ValueError(f"expected a number at {pos} in {text!r}")
        pos = m.end()

    def term() -> None:
        if not eat("("):
            num()
            return
        num()
        if not op():
            raise ValueError(f"expected an operator at {pos} in {text!r}")
        num()
        if not eat(")"):
            raise ValueError(f"missing ')' at {pos} in {text!r}")

    term()
    for _ in range(2):
        if not op():
            break
        term()
    if pos != len(text):
        raise ValueError(f"trailing text at {pos} in {text!r}")


def test_the_parser_is_strict() -> None:
    parse_arithmetic("(3 * 4) + 12 - 5")
    for bad in ("3 +", "3 + 4 + 5 + 6", "(3 + (4))", "03", "3+4"):
        with pytest.raises(ValueError):
            parse_arithmetic(bad)


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def batch(client, server, extra: dict, max_tokens: int) -> list:
    r = client.completions.create(model=server.model, prompt=PROMPTS, max_tokens=max_tokens, temperature=0.8,
                                  seed=11, extra_body=extra)
    assert len(r.choices) == len(PROMPTS)
    return r.choices


@pytest.mark.slow  # full tier: 50 sampled prompts each (~3 s a spelling); the grammar and json tests stay in the fast tier
@pytest.mark.parametrize("extra", [{"structured_outputs": {"choice": CHOICES}}, {"guided_choice": CHOICES}])
def test_choice_always_conforms(client, server, extra) -> None:
    choices = batch(client, server, extra, 32)
    bad = [(c.text, c.finish_reason) for c in choices if c.text not in CHOICES or c.finish_reason != "stop"]
    assert not bad


@pytest.mark.slow  # full tier: 50 sampled prompts each (~3 s a spelling); the grammar and json tests stay in the fast tier
@pytest.mark.parametrize("extra", [{"structured_outputs": {"regex": REGEX}}, {"guided_regex": REGEX}])
def test_regex_always_conforms(client, server, extra) -> None:
    choices = batch(client, server, extra, 16)
    assert all(re.fullmatch(REGEX, c.text) for c in choices), [c.text for c in choices if not re.fullmatch(REGEX, c.text)]


@pytest.mark.parametrize("extra", [{"structured_outputs": {"grammar": ARITHMETIC}}, {"guided_grammar": ARITHMETIC}])
def test_grammar_output_parses_with_its_parser(client, server, extra) -> None:
    r = client.chat.completions.create(model=server.model, max_tokens=40, temperature=0,
                                       messages=[{"role": "user", "content": "Write a short sum like 3 + 4 * 2."}],
                                       extra_body=extra)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", text
    parse_arithmetic(text)


def test_json_fields_validate(client, server) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    for extra in ({"structured_outputs": {"json": schema}}, {"guided_json": json.dumps(schema)}):
        r = client.chat.completions.create(model=server.model, max_tokens=80, temperature=0, extra_body=extra,
                                           messages=[{"role": "user", "content": "Name a city, as JSON."}])
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.chat.completions.create(model=server.model, max_tokens=8, temperature=0,
                                       extra_body={"structured_outputs": {"json_object": True}},
                                       messages=[{"role": "user", "content": "Name a city, as JSON."}])
    assert r.choices[0].message.content.startswith("{")  # (any object: it may run past 8 tokens)


@pytest.mark.parametrize(("extra", "param"), [
    ({"guided_regex": "a+", "guided_choice": ["x"]}, "guided_choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"regex": "(?<=a)b"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= missing"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"regex": "a", "whitespace_pattern": " *"}}, "structured_outputs.whitespace_pattern"),
    ({"structured_outputs": {"regex": "a", "bogus": 1}}, "structured_outputs.bogus"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_decoding_backend": "outlines", "guided_regex": "a"}, "guided_decoding_backend"),
    ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
])
def test_misuse_is_a_400_naming_the_field(client, server, extra, param) -> None:
    with pytest.raises(BadRequestError) as e:
        client.completions.create(model=server.model, prompt="Hi", max_tokens=2, extra_body=extra)
    assert e.value.body["param"] == param, e.value.body
