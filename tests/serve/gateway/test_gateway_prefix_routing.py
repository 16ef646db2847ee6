"""Prefix-aware routing end to end: the gateway counts its own in-flight requests, so a hot prefix spreads
over replicas once its home is over the load bound instead of collapsing onto one (the failure of
cache-aware routers that trust stale engine metrics), while sequential requests stay on the cached replica."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from serve.gateway.requests import prompt_text

pytestmark = pytest.mark.timeout(120)
SYSTEM = "You are the support assistant of tenant Alpha. Follow the policy handbook exactly. " * 8


@pytest.fixture
def four(fake_server, run_gateway, fast_limits, backend_entry):
    def make(policy: str):
        fakes = [fake_server("vllm", "base") for _ in range(4)]
        for f in fakes:
            f.configure(token_delay_s=0.05)
        gw = run_gateway({"backends": [backend_entry(f"r{i}", f.url) for i, f in enumerate(fakes)],
                          "routing": {"policy": policy}, "limits": {**fast_limits, "health_interval_s": 30}})
        gw.wait_healthy("r0", "r1", "r2", "r3")
        return gw, fakes
    return make


def chat(question: str) -> dict:
    return {"model": "base", "max_tokens": 20, "stream": True,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}


def placements(fakes) -> Counter:
    return Counter({i: len(f.requests()) for i, f in enumerate(fakes) if f.requests()})


@pytest.mark.parametrize("policy", ["prefix_aware", "hybrid"])
def test_sequential_requests_with_one_prefix_stay_on_one_replica(four, policy) -> None:
    gw, fakes = four(policy)
    with gw.client() as c:
        for q in range(8):
            assert c.post("/v1/chat/completions", json={**chat(f"question {q}"), "max_tokens": 2}).status_code == 200
    assert len(placements(fakes)) == 1


@pytest.mark.parametrize("policy", ["prefix_aware", "hybrid"])
def test_a_hot_prefix_spreads_once_its_replica_is_over_the_bound(four, policy) -> None:
    gw, fakes = four(policy)

    async def go() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
            async def one(q: int) -> None:
                r = await c.post("/v1/chat/completions", json=chat(f"question {q}"))
                assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")

            await asyncio.gather(*(one(q) for q in range(40)))

    asyncio.run(go())
    counts = placements(fakes)
    assert sum(counts.values()) == 40
    assert len(counts) >= 3, counts
    assert max(counts.values()) <= 25, counts  # ceil(1.5 * 40 / 4) = 15 at most at once, plus finished ones


def test_prompt_text_skips_content_parts_that_are_not_text() -> None:
    """Found by fuzzing (issue #10): a content part whose "text" was an int made routing raise, a gateway 500;
    the body goes on to the backend, which answers 400."""
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": 0}, {"type": "text", "text": "hi"},
                                                      "x", {"text": None}, {"type": "image_url"}]}]}
    assert prompt_text(body) == "<|user|>hi\n"
