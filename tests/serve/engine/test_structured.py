"""Structured outputs in the engine: the grammar cache (by schema hash), clear errors for schemas xgrammar
cannot compile, and constrained and free requests sharing a batch on the real model."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lorafleet.errors import ConfigError
from serve.engine.sampling_params import SamplingParams, StructuredOutput
from serve.engine.structured import GrammarCache, check_schema, schema_key

pytestmark = pytest.mark.timeout(300)

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 130},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "age"]}


def test_equal_schemas_share_one_compiled_grammar(tokenizer, eos_token_ids) -> None:
    cache = GrammarCache(tokenizer, 49152, eos_token_ids, max_entries=2)
    a = StructuredOutput.json_schema(PERSON)
    assert schema_key(a) == schema_key(StructuredOutput.json_schema(json.loads(json.dumps(PERSON))))
    first = cache.compile(a)
    assert cache.compile(StructuredOutput.json_schema(dict(PERSON))) is first
    assert (cache.stats.num_hits, cache.stats.num_misses) == (1, 1)
    cache.compile(StructuredOutput("json_object"))
    cache.compile(StructuredOutput.json_schema({"type": "integer"}))  # third entry: evicts the least recent (a)
    assert cache.compile(a) is not first and cache.stats.num_misses == 4


@pytest.mark.parametrize(("schema", "problem"), [
    ({"type": "object", "properties": {"a": {"type": "strng"}}}, 'Unsupported type "strng"'),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"type": "string", "pattern": "(?<=a)b"}, "Lookbehind"),
    ([1, 2], "must be a JSON object"),
])
def test_uncompilable_schemas_are_named_problems(schema, problem) -> None:
    with pytest.raises(ConfigError, match="cannot be compiled|must be a JSON object") as err:
        check_schema(schema)
    assert problem in str(err.value) and "/project/" not in str(err.value)


def test_a_bad_schema_is_refused_before_queuing(engine, tokenizer) -> None:
    bad = StructuredOutput.json_schema({"type": "object", "properties": {"x": {"type": "strng"}}})
    with pytest.raises(ConfigError, match="Unsupported type"):
        engine.add_request("bad", tokenizer("hi").input_ids, SamplingParams(structured=bad))
    assert "bad" not in engine.request_ids and not engine.has_unfinished


def test_constrained_and_free_rows_share_a_batch(engine, tokenizer) -> None:
    from lorafleet.chat import chat_token_ids

    ask = chat_token_ids(tokenizer, [{"role": "user", "content": "Describe a person as JSON."}])
    # json_object leaves keys and values free: a sampled reply can run into max_tokens, so this one is greedy
    ask_object = chat_token_ids(tokenizer, [{"role": "user", "content": "Return a JSON object with the keys name "
                                                                        "and age for Alice, who is 30."}])
    free = tokenizer("The capital of France is").input_ids
    solo = engine.generate([free], SamplingParams(max_tokens=16, temperature=0.0))[0]
    requests = {"json": (ask, SamplingParams(max_tokens=80, temperature=0.7, seed=2,
                                             structured=StructuredOutput.json_schema(PERSON))),
                "obj": (ask_object, SamplingParams(max_tokens=80, temperature=0.0, structured=StructuredOutput("json_object"))),
                "free": (free, SamplingParams(max_tokens=16, temperature=0.0))}
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    texts, ids, reasons, max_batch = {r: "" for r in requests}, {r: [] for r in requests}, {}, 0
    while engine.has_unfinished:
        outs = engine.step()
        max_batch = max(max_batch, len(outs))
        for out in outs:
            texts[out.request_id] += out.text
            ids[out.request_id] += out.token_ids
            if out.finished:
                reasons[out.request_id] = out.finish_reason
    assert max_batch == 3, "all three ran in the same steps"
    jsonschema.validate(json.loads(texts["json"]), PERSON)
    assert json.loads(texts["obj"]) == {"name": "Alice", "age": 30}
    assert reasons["json"] == reasons["obj"] == "stop", "a complete grammar ends the output"
    assert ids["free"] == solo, "masking other rows leaves a free row's greedy tokens alone"
