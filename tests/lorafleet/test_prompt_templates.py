"""lorafleet/templates: the template format, typed variables, deterministic rendering and the compiled
artifact's reader. No model is loaded here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.errors import ArtifactError, ConfigError
from lorafleet.templates import (CompiledTemplate, StaticPrefix, VariableError, canonical_json, load_compiled,
                                 load_compiled_templates, load_template, normalize_text, parse_template, render_messages,
                                 write_compiled)
from lorafleet.templates.compiled import dump_template_yaml
from lorafleet.templates.prefix import block_size_from_metrics, num_cacheable_tokens, num_pad_tokens, num_wasted_tokens
from lorafleet.templates.render import render_sections, to_messages
from lorafleet.templates.spec import SENTINEL

EXAMPLES = Path(__file__).resolve().parents[2] / "optimize" / "templates" / "examples"

TEMPLATE = """\
name: shop
version: 3
constants:
  tools: [{name: b, kind: lookup}, {name: a}]
variables:
  question: {type: string, max_length: 40}
  customer: {type: json, required: false, default: {}}
  count: {type: integer, minimum: 0, maximum: 10, required: false}
  ratio: {type: number, required: false}
  vip: {type: boolean, required: false}
  plan: {type: enum, values: [free, pro], required: false}
sections:
  - name: tools
    kind: tools
    text: "Tools: {{ tools | canonical_json }}"
  - name: policy
    kind: system
    text: |
      Be brief.   \r
      \t


      Be kind.
  - name: customer
    kind: context
    text: "{% if customer %}Customer: {{ customer | canonical_json }}{% endif %}"
  - name: question
    kind: user
    text: "{{ question }}"
"""


@pytest.fixture(scope="module")
def shop():
    return parse_template(TEMPLATE)


def test_examples_load() -> None:
    names = {load_template(p).name for p in sorted(EXAMPLES.glob("*.yaml"))}
    assert names == {"support", "support-naive", "rag-qa"}


def test_sections_take_scope_and_role_from_their_kind(shop) -> None:
    got = [(s.name, s.scope, s.role, s.text_line) for s in shop.sections]
    assert got == [("tools", "static", "system", 15), ("policy", "static", "system", 19),
                   ("customer", "per_request", "user", 26), ("question", "per_request", "user", 29)]
    assert shop.version == "3" and shop.variable("customer").required is False


def test_every_problem_is_listed_with_its_line() -> None:
    bad = """\
name: Bad Name
extra: 1
variables:
  q: {type: strng}
  e: {type: enum}
  n: {type: integer, default: "x"}
sections:
  - {name: a, kind: sermon, text: x}
  - {name: b, text: "{% if %}"}
  - {name: c, text: "{{ nope }}"}
  - {name: c, scope: later, role: robot, text: 1}
"""
    with pytest.raises(ConfigError) as err:
        parse_template(bad)
    msg = str(err.value)
    for expected in ("line 1: name must match", "line 2: unknown key 'extra'", "line 4: variable 'q': type must be",
                     "line 5: variable 'e': an enum needs", "line 6: variable 'n': expected an integer",
                     "line 8: section 'a': kind must be", "line 9: section 'b': Jinja syntax error",
                     "line 10: section 'c' uses undeclared name(s) ['nope']", "line 11: section 'c': scope must be",
                     "role must be", "text must be a string", "name is used by another section"):
        assert expected in msg, expected
    assert msg.startswith("<template>: 12 problem(s):")


def test_rendering_is_canonical_and_normalized(shop) -> None:
    a = render_messages(shop, {"question": "Hi  \r\nthere", "customer": {"z": 1, "a": {"y": [2, 1], "b": "é"}}})
    b = render_messages(shop, {"customer": {"a": {"b": "e\u0301", "y": [2, 1]}, "z": 1}, "question": "Hi\nthere"})
    assert a == b  # key order, trailing spaces, CRLF and Unicode composition do not change the bytes
    assert a == [{"role": "system", "content": 'Tools: [{"kind":"lookup","name":"b"},{"name":"a"}]\n\nBe brief.\n\nBe kind.'},
                 {"role": "user", "content": 'Customer: {"a":{"b":"é","y":[2,1]},"z":1}\n\nHi\nthere'}]
    # an optional section that renders to nothing is left out
    assert render_messages(shop, {"question": "q"})[1] == {"role": "user", "content": "q"}


def test_canonical_json_and_normalize_text() -> None:
    assert canonical_json({"b": [1, {"d": 2, "c": None}], "a": "ü"}) == '{"a":"ü","b":[1,{"c":null,"d":2}]}'
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
    assert normalize_text("\n\n  a  \n\n\n\nb\t\r\n") == "a\n\nb"


@pytest.mark.parametrize("values, variable, message", [
    ({"question": 5}, "question", "expected a string, got integer 5"),
    ({"question": "x" * 41}, "question", "41 characters is longer than max_length 40"),
    ({}, "question", "missing required variable 'question'"),
    ({"question": "q", "qestion": "q"}, "qestion", "unknown variable 'qestion' (template 'shop' takes: question, customer"),
    ({"question": "q", "count": 11}, "count", "11 is above the maximum 10"),
    ({"question": "q", "count": True}, "count", "expected an integer, got boolean"),
    ({"question": "q", "ratio": "1.5"}, "ratio", "expected a finite number"),
    ({"question": "q", "vip": "yes"}, "vip", "expected a boolean"),
    ({"question": "q", "plan": "gold"}, "plan", "'gold' is not one of ['free', 'pro']"),
    ({"question": "q", "customer": {"when": object()}}, "customer", "expected a JSON value"),
])
def test_bad_variables_name_the_variable(shop, values, variable, message) -> None:
    with pytest.raises(VariableError) as err:
        render_messages(shop, values)
    assert err.value.variable == variable
    assert message in str(err.value)


def test_all_problems_of_a_request_are_reported(shop) -> None:
    with pytest.raises(VariableError) as err:
        render_messages(shop, {"bogus": 1, "count": -1})
    assert err.value.variable == "bogus"
    assert "missing required variable 'question'" in str(err.value) and "below the minimum 0" in str(err.value)


def test_static_end_marker(shop) -> None:
    sections = render_sections(shop, {"question": "q", "customer": {"a": 1}})
    messages = to_messages(sections, mark_static_end=True)
    # the per-request part starts a new message: the marker opens it
    assert messages[1]["content"].startswith(SENTINEL + "Customer:")
    joined = parse_template(TEMPLATE.replace("kind: context\n", "kind: context\n    role: system\n"))
    messages = to_messages(render_sections(joined, {"question": "q", "customer": {"a": 1}}), mark_static_end=True)
    # inside one message it goes before the blank line, whose tokens depend on what follows
    assert messages[0]["content"].endswith("Be kind." + SENTINEL + '\n\nCustomer: {"a":1}')
    all_static = parse_template("name: s\nsections: [{name: a, text: hi}]")
    assert to_messages(render_sections(all_static, {}), mark_static_end=True) == [{"role": "system", "content": "hi" + SENTINEL}]


def test_yaml_round_trip(shop) -> None:
    again = parse_template(dump_template_yaml(shop))
    assert [(s.name, s.kind, s.scope, s.role) for s in again.sections] == [(s.name, s.kind, s.scope, s.role) for s in shop.sections]
    assert [(v.name, v.type, v.required, v.default) for v in again.variables] == \
        [(v.name, v.type, v.required, v.default) for v in shop.variables]
    values = {"question": "q", "customer": {"b": 2}, "plan": "pro"}
    assert render_messages(again, values) == render_messages(shop, values)


def test_block_arithmetic() -> None:
    assert [num_cacheable_tokens(n, 16) for n in (0, 15, 16, 33)] == [0, 0, 16, 32]
    assert [num_wasted_tokens(n, 128) for n in (127, 128, 300)] == [127, 0, 44]
    assert [num_pad_tokens(n, 16) for n in (16, 17, 31)] == [0, 15, 1]


def test_block_size_from_metrics() -> None:
    vllm = ('# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n'
            '# TYPE vllm:cache_config_info gauge\n'
            'vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True"} 1.0\n')
    assert block_size_from_metrics(vllm) == 128
    assert block_size_from_metrics("# TYPE x counter\nx_total 1.0\n") is None


def test_compiled_artifact_round_trip_and_checks(shop, tmp_path: Path) -> None:
    compiled = CompiledTemplate(shop, StaticPrefix((5, 6, 7), 16), "m", "abc", ("moved x",), {"ok": True})
    out = write_compiled(compiled, tmp_path / "shop")
    back = load_compiled(out)
    assert (back.name, back.version, back.prefix.token_ids, back.changes, back.path) == ("shop", "3", (5, 6, 7), ("moved x",), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["static_prefix"]["num_wasted_tokens"] == 3 and manifest["static_prefix"]["sha256"] == back.prefix.sha256
    manifest["static_prefix"]["token_ids"] = [5, 6, 8]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not match"):
        load_compiled(out)
    with pytest.raises(ArtifactError, match="manifest.json missing"):
        load_compiled(tmp_path)


def test_gateway_template_list(shop, tmp_path: Path) -> None:
    for name in ("one", "two"):
        write_compiled(CompiledTemplate(shop.__class__(name, "1", shop.sections, shop.variables, shop.constants),
                                        StaticPrefix((1,), 16), "m", "x"), tmp_path / "all" / name)
    problems: list[str] = []
    found = load_compiled_templates(["all", "all/one", str(EXAMPLES / "support.yaml"), "missing"], tmp_path, problems)
    assert [t.name for t in found] == ["one", "two", "one"]
    assert any("support.yaml' is not a compiled template directory; compile it first" in p for p in problems)
    assert any("missing' is not a compiled template directory" in p for p in problems)
    assert any("duplicate template names ['one']" in p for p in problems)


@pytest.mark.parametrize("spec, message", [("{type: string, max_length: 0}", "max_length must be a positive integer"),
                                           ("{type: string, max_length: true}", "max_length must be a positive integer"),
                                           ("{type: number, maximum: high}", "maximum must be a number")])
def test_variable_limits_are_checked(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"line 3: variable 'q': {message}"):
        parse_template(f"name: t\nvariables:\n  q: {spec}\nsections: [{{name: a, text: x}}]")
