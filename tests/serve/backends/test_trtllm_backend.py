"""serve/backends/trtllm.py against the trtllm-serve protocol fake (TensorRT-LLM needs an NVIDIA GPU; see the
fake's docstring for the documents it follows)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.backends import BackendSpec, Endpoint, UpstreamRequest, make_backend

pytestmark = pytest.mark.timeout(60)
BASE = "TinyLlama-1.1B-Chat-v1.0"


def test_adapters_travel_in_lora_request(fake_server, adapter_dir) -> None:
    fake = fake_server("trtllm", BASE)
    path = adapter_dir("fr")

    async def go() -> None:
        b = make_backend(BackendSpec("trt", "trtllm", fake.url, base_model="tiny", served_model=BASE))
        try:
            assert await b.health()
            await b.load_adapter("fr", path)
            assert (await b.list_models()) .adapters == ("fr",)
            body = {"model": "fr", "messages": [{"role": "user", "content": "bonjour"}], "max_tokens": 2,
                    "stream": True, "stream_options": {"include_usage": True}}
            payloads = [p async for p in b.stream(UpstreamRequest(Endpoint.CHAT, body, "fr", 10))]
            chunks = [json.loads(p) for p in payloads[:-1]]
            assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == " fr#0 fr#1"
            assert chunks[-1]["usage"]["completion_tokens"] == 2
            assert {c["model"] for c in chunks} == {"fr"}
            sent = fake.requests()[-1]
            assert sent["model"] == BASE
            assert sent["lora_request"] == {"lora_name": "fr", "lora_int_id": 1, "lora_path": str(path)}

            r = await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": "tiny", "prompt": "a", "max_tokens": 1}, None, 10))
            assert r.status == 200 and r.body["choices"][0]["text"] == f" {BASE}#0" and r.body["model"] == "tiny"
            assert "lora_request" not in fake.requests()[-1]

            await b.unload_adapter("fr")
            await b.load_adapter("fr", path)  # weights may have changed: a new lora_int_id
            await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": "fr", "prompt": "a", "max_tokens": 1}, "fr", 10))
            assert fake.requests()[-1]["lora_request"]["lora_int_id"] == 2
        finally:
            await b.aclose()

    asyncio.run(go())


def test_unknown_fields_are_refused_like_trtllm(fake_server) -> None:
    fake = fake_server("trtllm", BASE)

    async def go() -> None:
        b = make_backend(BackendSpec("trt", "trtllm", fake.url, base_model=BASE))
        try:
            r = await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": BASE, "prompt": "a", "bogus": 1}, None, 10))
            assert r.status == 400 and "bogus" in r.body["message"]
        finally:
            await b.aclose()

    asyncio.run(go())


def test_iteration_stats_metrics(fake_server) -> None:
    fake = fake_server("trtllm", BASE)
    fake.configure(num_waiting=4)

    async def go() -> None:
        b = make_backend(BackendSpec("trt", "trtllm", fake.url, base_model=BASE))
        try:
            m = await b.scrape_metrics()
            assert (m.num_running, m.num_waiting, m.kv_cache_usage) == (0, 4, 0.0)
        finally:
            await b.aclose()

    asyncio.run(go())
