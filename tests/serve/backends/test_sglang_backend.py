"""serve/backends/sglang.py against the SGLang protocol fake (SGLang needs a GPU; see the fake's docstring for
the documents it follows)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve.backends import BackendSpec, Endpoint, UpstreamError, UpstreamRequest, make_backend

pytestmark = pytest.mark.timeout(60)
BASE = "meta-llama/Llama-3.1-8B-Instruct"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def spec(url: str) -> BackendSpec:
    return BackendSpec("sg", "sglang", url, base_model="llama", served_model=BASE)


def test_adapter_lifecycle_and_model_naming(fake_server, adapter_dir) -> None:
    fake = fake_server("sglang", BASE)

    async def go() -> None:
        b = make_backend(spec(fake.url))
        try:
            assert await b.health()
            await b.load_adapter("sql", adapter_dir("sql"))
            await b.load_adapter("sql", adapter_dir("sql-again"))  # already loaded: fine
            served = await b.list_models()
            assert served.base_models == (BASE,) and served.adapters == ("sql",)

            r = await b.generate(UpstreamRequest(Endpoint.CHAT, {"model": "sql", **CHAT}, "sql", 10))
            assert r.status == 200 and r.body["model"] == "sql"
            assert r.body["choices"][0]["message"]["content"] == " sql#0 sql#1 sql#2"
            assert fake.requests()[-1]["model"] == f"{BASE}:sql"  # SGLang's base:adapter syntax

            payloads = [p async for p in b.stream(UpstreamRequest(
                Endpoint.COMPLETIONS, {"model": "sql", "prompt": "x", "max_tokens": 2, "stream": True}, "sql", 10))]
            assert payloads[-1] == b"[DONE]"
            chunks = [json.loads(p) for p in payloads[:-1]]
            assert {c["model"] for c in chunks} == {"sql"}
            assert "".join(c["choices"][0]["text"] for c in chunks) == " sql#0 sql#1"

            base = await b.generate(UpstreamRequest(Endpoint.COMPLETIONS, {"model": "llama", "prompt": "x", "max_tokens": 1}, None, 10))
            assert base.body["model"] == "llama" and fake.requests()[-1]["model"] == BASE

            await b.unload_adapter("sql")
            await b.unload_adapter("sql")  # not loaded any more: fine
            assert (await b.list_models()).adapters == ()
            missing = await b.generate(UpstreamRequest(Endpoint.CHAT, {"model": "sql", **CHAT}, "sql", 10))
            assert missing.status == 400
        finally:
            await b.aclose()

    asyncio.run(go())


def test_failed_load_is_a_clear_error(fake_server, adapter_dir, tmp_path) -> None:
    fake = fake_server("sglang", BASE, "--max-lora-rank", "8")

    async def go() -> None:
        b = make_backend(spec(fake.url))
        try:
            with pytest.raises(UpstreamError) as e:
                await b.load_adapter("wide", adapter_dir("wide", rank=64))
            assert e.value.status == 400 and "rank 64" in str(e.value) and not e.value.retryable
            with pytest.raises(UpstreamError, match="no adapter_config.json"):
                await b.load_adapter("ghost", tmp_path / "missing")
            await b.load_adapter("ok", adapter_dir("ok"))  # a failed load does not block others
            assert (await b.list_models()).adapters == ("ok",)
        finally:
            await b.aclose()

    asyncio.run(go())


def test_metrics(fake_server) -> None:
    fake = fake_server("sglang", BASE)
    fake.configure(num_waiting=7)

    async def go() -> None:
        b = make_backend(spec(fake.url))
        try:
            m = await b.scrape_metrics()
            assert (m.num_running, m.num_waiting, m.prefix_cache_hit_rate) == (0, 7, 0.0)
        finally:
            await b.aclose()

    asyncio.run(go())
