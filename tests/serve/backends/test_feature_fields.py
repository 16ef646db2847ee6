"""Issue #11's request fields reach each engine kind under its own documented names: vLLM and SGLang take
OpenAI's (``response_format`` json_schema, ``logprobs``/``top_logprobs``, ``n``, ``tools``/``tool_choice``)
unchanged; TensorRT-LLM gets ``response_format={"type": "json", "schema": ...}`` and no lorafleet-only fields
(its requests forbid unknown ones). Checked on the protocol fakes, which record what they receive."""

from __future__ import annotations

import asyncio

import pytest

from serve.backends import BackendSpec, Endpoint, UpstreamRequest, make_backend

pytestmark = pytest.mark.timeout(60)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 2, "logprobs": True, "top_logprobs": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}], "tool_choice": "auto"}


def sent_body(fake_server, kind: str, body: dict) -> tuple[int, dict]:
    """(status, body the fake received) for one chat request through a backend of ``kind``."""
    fake = fake_server(kind, "base-model")

    async def go() -> int:
        b = make_backend(BackendSpec("b", kind, fake.url, base_model="base", served_model="base-model"))
        try:
            r = await b.generate(UpstreamRequest(Endpoint.CHAT, {"model": "base", **body}, None, 10))
            return r.status
        finally:
            await b.aclose()

    status = asyncio.run(go())
    return status, fake.requests()[-1]


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_openai_names_pass_unchanged(fake_server, kind) -> None:
    status, sent = sent_body(fake_server, kind, {**BODY, "num_speculative_tokens": 4})
    assert status == 200
    assert {k: v for k, v in sent.items() if k != "model"} == {**BODY, "num_speculative_tokens": 4}


def test_trtllm_gets_its_own_names(fake_server) -> None:
    status, sent = sent_body(fake_server, "trtllm", {**BODY, "num_speculative_tokens": 4})
    assert status == 200, "no field the fake (like trtllm-serve) would refuse"
    assert sent["response_format"] == {"type": "json", "schema": SCHEMA}
    assert "num_speculative_tokens" not in sent
    assert {k: sent[k] for k in ("n", "logprobs", "top_logprobs", "tools", "tool_choice")} == \
        {k: BODY[k] for k in ("n", "logprobs", "top_logprobs", "tools", "tool_choice")}
