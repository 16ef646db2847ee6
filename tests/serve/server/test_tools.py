"""serve/server/tools.py and chat_deltas.py without a model: tool_choice modes and their schemas, parsing
replies into OpenAI tool_calls, streamed deltas per mode, and rendering tools into the prompt."""

from __future__ import annotations

import copy
import json

import pytest

from serve.server.chat_deltas import ChoiceDeltas
from serve.server.errors import HTTPError
from serve.server.tools import finish_reason, parse_tool_calls, plan_tools, prompt_token_ids

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": PARAMS}},
         {"type": "function", "function": {"name": "time", "description": "Local time."}}]


def test_modes_and_constraints() -> None:
    assert plan_tools(None, None, None) is None and plan_tools(TOOLS, "none", None) is None
    auto = plan_tools(TOOLS, None, None)
    assert auto.mode == "auto" and auto.structured is None and auto.names == ("weather", "time")
    named = plan_tools(TOOLS, {"type": "function", "function": {"name": "weather"}}, None)
    assert named.named == "weather" and json.loads(named.structured.schema) == PARAMS
    required = json.loads(plan_tools(TOOLS, "required", None).structured.schema)
    assert required["maxItems"] == 1 and required["minItems"] == 1
    assert [o["properties"]["name"]["enum"] for o in required["items"]["anyOf"]] == [["weather"], ["time"]]
    assert "maxItems" not in json.loads(plan_tools(TOOLS, "required", True).structured.schema)


@pytest.mark.parametrize(("tools", "choice", "param"), [
    (None, "required", "tool_choice"),
    ([{"type": "function"}], "auto", "tools"),
    ([{"type": "function", "function": {"name": "a b"}}], "auto", "tools"),
    (TOOLS + TOOLS[:1], "auto", "tools"),
    (TOOLS, {"type": "function", "function": {"name": "missing"}}, "tool_choice"),
    (TOOLS, "sometimes", "tool_choice"),
    ([{"type": "function", "function": {"name": "x", "parameters": {"type": "strng"}}}], "required", "tools"),
])
def test_bad_tools_are_400(tools, choice, param) -> None:
    with pytest.raises(HTTPError) as err:
        plan_tools(tools, choice, None)
    assert err.value.status == 400 and err.value.param == param


def test_parsing_replies() -> None:
    named = plan_tools(TOOLS, {"type": "function", "function": {"name": "weather"}}, None)
    assert parse_tool_calls('{"city": "Oslo"}', named)[1][0]["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    required = plan_tools(TOOLS, "required", None)
    content, calls = parse_tool_calls('[{"name": "time", "parameters": {}}]', required)
    assert content is None and calls[0]["function"] == {"name": "time", "arguments": "{}"}
    assert parse_tool_calls('[{"name": "time", "param', required) == ('[{"name": "time", "param', [])
    auto = plan_tools(TOOLS, "auto", None)
    text = 'Sure.\n<tool_call>{"name": "weather", "arguments": {"city": "Rome"}}</tool_call>'
    content, calls = parse_tool_calls(text, auto)
    assert content == "Sure." and json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    assert parse_tool_calls('{"name": "time", "arguments": {}}', auto)[1][0]["function"]["name"] == "time"
    assert parse_tool_calls('{"name": "unknown", "arguments": {}}', auto) == ('{"name": "unknown", "arguments": {}}', [])
    assert parse_tool_calls("Hello there", auto) == ("Hello there", [])
    assert finish_reason("stop", auto, True) == "tool_calls" and finish_reason("stop", named, True) == "stop"
    assert finish_reason("length", auto, True) == "length"


def feed_all(d: ChoiceDeltas, pieces: list[str]) -> list[dict]:
    out = [delta for p in pieces for delta, _ in d.feed(p, [])]
    return out + [delta for delta, _ in d.finish()]


def test_auto_streams_plain_replies_and_holds_tool_calls() -> None:
    auto = plan_tools(TOOLS, "auto", None)
    plain = feed_all(ChoiceDeltas(auto), [" ", "<", "b>Hi", " there"])
    assert plain == [{"content": " <b>Hi"}, {"content": " there"}], "sent as soon as it cannot be a call"
    held = ChoiceDeltas(auto)
    deltas = feed_all(held, ["<tool_", 'call>{"name": "time", ', '"arguments": {}}</tool_call>'])
    assert len(deltas) == 1 and deltas[0]["tool_calls"][0]["function"]["name"] == "time" and held.has_tool_calls
    assert feed_all(ChoiceDeltas(auto), ["{not json"]) == [{"content": "{not json"}]


def test_named_streams_arguments_in_pieces() -> None:
    d = ChoiceDeltas(plan_tools(TOOLS, {"type": "function", "function": {"name": "weather"}}, None))
    deltas = feed_all(d, ['{"city"', ': "Oslo"}'])
    first, second = (x["tool_calls"][0] for x in deltas)
    assert first["function"] == {"name": "weather", "arguments": '{"city"'} and first["id"] and first["type"] == "function"
    assert second == {"index": 0, "function": {"arguments": ': "Oslo"}'}}


def test_tools_reach_the_prompt(tokenizer) -> None:
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    plain = tokenizer.decode(prompt_token_ids(tokenizer, msgs, None, True))
    with_tools = tokenizer.decode(prompt_token_ids(tokenizer, msgs, plan_tools(TOOLS, "auto", None), True))
    assert "<tools>" not in plain and '"name": "weather"' in with_tools and "<tool_call>" in with_tools
    aware = copy.deepcopy(tokenizer)
    aware.chat_template = ("{% for t in tools %}TOOL:{{ t.function.name }};{% endfor %}"
                           "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}")
    rendered = aware.decode(prompt_token_ids(aware, msgs, plan_tools(TOOLS, "auto", None), False))
    assert rendered == "TOOL:weather;TOOL:time;user:Weather in Oslo?;", "a tool-aware template renders them itself"
