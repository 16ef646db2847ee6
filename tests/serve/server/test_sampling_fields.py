"""Penalties, min_p, logit_bias, bad_words and min_tokens through the unmodified ``openai`` SDK against a real
``lorafleet serve`` (the token-level references against HF are in tests/serve/engine/test_sampling_controls.py):
each field reaches the engine, and each out-of-range value is a 400 naming its field."""

from __future__ import annotations

import pytest
from openai import BadRequestError, OpenAI

pytestmark = pytest.mark.timeout(300)

PROMPT = "1, 2, 3, 4, 5,"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def complete(client, server, **kw):
    return client.completions.create(**{"model": server.model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                        "logprobs": 0, **kw})


def test_penalties_change_greedy_output(client, server) -> None:
    free = complete(client, server).choices[0].text
    for kw in ({"frequency_penalty": 2.0}, {"frequency_penalty": 1.0, "presence_penalty": 2.0},
               {"extra_body": {"repetition_penalty": 2.0}}):
        assert complete(client, server, **kw).choices[0].text != free, kw


def test_logit_bias_bans_the_greedy_token(client, server, tokenizer) -> None:
    free = complete(client, server).choices[0]
    first = tokenizer(PROMPT + free.logprobs.tokens[0]).input_ids[len(tokenizer(PROMPT).input_ids):]
    assert len(first) == 1
    biased = complete(client, server, logit_bias={str(first[0]): -100}).choices[0]
    assert biased.logprobs.tokens[0] != free.logprobs.tokens[0]


def test_bad_words_and_min_tokens_on_chat(client, server) -> None:
    free = client.chat.completions.create(model=server.model, messages=CAPITAL, temperature=0, max_tokens=24)
    assert "Paris" in free.choices[0].message.content and free.choices[0].finish_reason == "stop"
    banned = client.chat.completions.create(model=server.model, messages=CAPITAL, temperature=0, max_tokens=24,
                                            extra_body={"bad_words": ["Paris"]})
    assert "Paris" not in banned.choices[0].message.content
    longer = client.chat.completions.create(model=server.model, messages=CAPITAL, temperature=0, max_tokens=24,
                                            extra_body={"min_tokens": 20})
    assert longer.usage.completion_tokens >= 20 > free.usage.completion_tokens


def test_allowed_token_ids_restrict_the_output(client, server, tokenizer) -> None:
    allowed = tokenizer(" 7 8 9,").input_ids
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=2,
                                  extra_body={"allowed_token_ids": allowed})
    assert set(r.choices[0].text) <= set(" 789,"), r.choices[0].text  # (only pieces of the allowed text)


def test_include_stop_str_in_output(client, server) -> None:
    cut = complete(client, server, stop=[" 8"]).choices[0].text
    kept = complete(client, server, stop=[" 8"], extra_body={"include_stop_str_in_output": True}).choices[0].text
    assert kept == cut + " 8" and cut == " 6, 7,"


def test_min_p_one_is_greedy(client, server) -> None:
    free = complete(client, server).choices[0].text
    assert complete(client, server, temperature=1.5, seed=1, extra_body={"min_p": 1.0}).choices[0].text == free


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0), ("min_p", 1.5),
    ("logit_bias", {"49152": 1}), ("logit_bias", {"12": 101}), ("logit_bias", {"x": 1}), ("min_tokens", 13),
    ("bad_words", [" "]), ("allowed_token_ids", []), ("allowed_token_ids", [49152]),
])
def test_out_of_range_is_a_400_naming_the_field(client, server, field, value) -> None:
    with pytest.raises(BadRequestError) as e:
        complete(client, server, extra_body={field: value})
    assert e.value.body["param"] == field, e.value.body
