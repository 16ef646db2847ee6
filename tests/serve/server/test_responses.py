"""``/v1/responses`` through the unmodified ``openai`` SDK against a real ``lorafleet serve`` (fp32, greedy):
plain output equals chat completions for the same messages, streams join to the plain text in OpenAI's event
order, json_schema and tool outputs are valid, and stored responses continue conversations."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.timeout(240)  # includes starting the server on first use

PERSON = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_plain_equals_chat_completions(client: OpenAI, server) -> None:
    r = client.responses.create(model=server.model, instructions="Answer briefly.", input="What is the capital of France?",
                                temperature=0, max_output_tokens=12)
    chat = client.chat.completions.create(model=server.model, temperature=0, max_tokens=12, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}])
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == chat.choices[0].message.content and r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert r.instructions == "Answer briefly." and r.store is True
    # message items with input_text parts are the same conversation as a string input
    parts = client.responses.create(model=server.model, instructions="Answer briefly.", temperature=0, max_output_tokens=12,
                                    input=[{"role": "user", "content": [{"type": "input_text",
                                                                         "text": "What is the capital of France?"}]}])
    assert parts.output_text == r.output_text


def test_stream_joins_to_plain_text_in_event_order(client: OpenAI, server) -> None:
    kw = dict(model=server.model, input="Name three fruits.", temperature=0, max_output_tokens=10)
    plain = client.responses.create(**kw)
    events = list(client.responses.create(**kw, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          f"response.{plain.status}"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == plain.output_text
    assert events[-1].response.output_text == plain.output_text
    assert events[-1].response.usage.output_tokens == plain.usage.output_tokens
    with client.responses.stream(**kw) as stream:  # the SDK's helper accumulates the same events
        helper = list(stream)
    # (its get_final_response() wants response.completed; max_output_tokens cut this one: response.incomplete)
    assert [e.type for e in helper] == kinds
    assert helper[-1].response.output_text == plain.output_text


def test_json_schema_format_validates(client: OpenAI, server) -> None:
    r = client.responses.create(model=server.model, input="Invent a person.", temperature=0, max_output_tokens=40,
                                text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), PERSON)
    assert r.text.format.type == "json_schema"


def test_tool_call_then_tool_output(client: OpenAI, server) -> None:
    kw = dict(model=server.model, tools=[WEATHER], temperature=0, max_output_tokens=30)
    r = client.responses.create(**kw, input="What is the weather in Paris?", tool_choice="required")
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    follow = client.responses.create(**kw, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}], tool_choice="none")
    assert follow.output_text and follow.output[0].type == "message"
    # the same round trip continuing the stored response instead of resending it
    cont = client.responses.create(**kw, previous_response_id=r.id, tool_choice="none",
                                   input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}])
    assert cont.output_text == follow.output_text and cont.previous_response_id == r.id


def test_streamed_tool_call_arguments(client: OpenAI, server) -> None:
    events = list(client.responses.create(model=server.model, tools=[WEATHER], input="Weather in Rome?", stream=True,
                                          tool_choice={"type": "function", "name": "get_weather"},
                                          temperature=0, max_output_tokens=30))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == done[0].arguments
    jsonschema.validate(json.loads(done[0].arguments), WEATHER["parameters"])
    assert events[-1].response.output[0].type == "function_call"


def test_previous_response_id_continues_and_unknown_is_404(client: OpenAI, server) -> None:
    kw = dict(model=server.model, temperature=0, max_output_tokens=8)
    first = client.responses.create(**kw, input="My name is Ada.")
    second = client.responses.create(**kw, input="What is my name?", previous_response_id=first.id)
    resent = client.responses.create(**kw, input=[{"role": "user", "content": "My name is Ada."},
                                                  {"role": "assistant", "content": first.output_text},
                                                  {"role": "user", "content": "What is my name?"}])
    assert second.output_text == resent.output_text
    assert client.responses.retrieve(first.id).output_text == first.output_text
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(**kw, input="hi", previous_response_id="resp_unknown")
    assert e.value.body["param"] == "previous_response_id"
    unstored = client.responses.create(**kw, input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_adapter_by_model_name(client: OpenAI, server) -> None:
    r = client.responses.create(model="a0", input="Say hello.", temperature=0, max_output_tokens=6)
    chat = client.chat.completions.create(model="a0", messages=[{"role": "user", "content": "Say hello."}],
                                          temperature=0, max_tokens=6)
    assert r.output_text == chat.choices[0].message.content and r.model == "a0"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-adapter", input="hi", max_output_tokens=2)


HOSTILE = [{"input": None}, {"input": []}, {"input": [{"role": "tool", "content": "x"}]},
           {"input": [{"type": "image", "url": "x"}]}, {"input": [{"role": "user", "content": 5}]},
           {"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, {"input": "hi", "text": {"format": "x"}},
           {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": 3}}},
           {"input": "hi", "tools": [{"type": "function"}]}, {"input": "hi", "tool_choice": {"type": "function"}},
           {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
           {"input": "hi", "max_output_tokens": -1}, {"input": "hi", "temperature": 9}, {"input": "hi", "truncation": "auto"},
           {"input": [{"type": "function_call_output", "call_id": "c", "output": {"a": 1}}]}]


def test_malformed_requests_are_4xx_naming_the_field(http, server) -> None:
    for body in HOSTILE:
        r = http.post("/v1/responses", json={"model": server.model, **body})
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.json()["error"]["message"], body
    assert http.get("/v1/responses/resp_nope").status_code == 404


def test_unsupported_fields_are_400(client: OpenAI, server) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=server.model, input="hi", reasoning={"effort": "low"})
    assert e.value.body["param"] == "reasoning"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=server.model, input="hi", tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools"
