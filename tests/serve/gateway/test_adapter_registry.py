"""serve/gateway/adapters.py: single-flight on-demand loading, LRU unloading at max_adapters, pins, verification
against /v1/models, and failures that stay local. Uses an in-memory Backend double that counts calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lorafleet.errors import BackendError, NotFoundError
from serve.backends.base import Backend, BackendSpec, ServedModels, UpstreamError
from serve.gateway.adapters import AdapterLoadError, AdapterRegistry
from serve.gateway.config import AdapterSpec
from serve.gateway.fleet import Replica
from serve.gateway.metrics import GatewayMetrics


class CountingBackend(Backend):
    """Loads take ``load_delay_s``; adapters named ``bad*`` fail like a rank mismatch; ``hide`` makes a load
    succeed without the adapter appearing in /v1/models."""

    def __init__(self, name: str = "r0", load_delay_s: float = 0.05) -> None:
        super().__init__(BackendSpec(name, "vllm", "http://x", "base"))
        self.loaded: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.load_delay_s = load_delay_s
        self.hide: set[str] = set()

    async def load_adapter(self, name: str, path: Path) -> None:
        self.calls.append(("load", name))
        await asyncio.sleep(self.load_delay_s)
        if name.startswith("bad"):
            raise UpstreamError(400, f"LoRA rank 64 is greater than max_lora_rank 8 ({name})")
        if name not in self.hide:
            self.loaded.append(name)

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.remove(name)

    async def list_models(self) -> ServedModels:
        return ServedModels(("base",), tuple(self.loaded))

    async def generate(self, req):  # pragma: no cover - not used here
        raise NotImplementedError

    def stream_batches(self, req):  # pragma: no cover
        raise NotImplementedError

    async def health(self) -> bool:  # pragma: no cover
        return True

    async def scrape_metrics(self):  # pragma: no cover
        return None


def setup(names=("a", "b", "c", "d", "bad", "hidden"), max_adapters: int = 2) -> tuple[AdapterRegistry, Replica, CountingBackend]:
    backend = CountingBackend()
    replica = Replica(BackendSpec("r0", "vllm", "http://x", "base", max_adapters=max_adapters), backend, is_healthy=True)
    registry = AdapterRegistry([AdapterSpec(n, Path(f"/adapters/{n}"), "base") for n in names], GatewayMetrics())
    registry.add_replica("r0", max_adapters)
    return registry, replica, backend


def test_resolve() -> None:
    registry, _, _ = setup()
    assert registry.resolve("base", {"base"}) == ("base", None)
    assert registry.resolve("a", {"base"}) == ("base", "a")
    with pytest.raises(NotFoundError):
        registry.resolve("zzz", {"base"})
    with pytest.raises(NotFoundError):
        registry.resolve("a", {"other-base"})  # declared, but no replica serves its base


def test_concurrent_first_requests_trigger_exactly_one_load() -> None:
    registry, replica, backend = setup()

    async def go() -> None:
        await asyncio.gather(*(registry.ensure_loaded(replica, "a") for _ in range(20)))

    asyncio.run(go())
    assert backend.calls == [("load", "a")]
    assert registry.resident("r0") == {"a"}


def test_lru_unload_at_max_adapters_skips_pinned() -> None:
    registry, replica, backend = setup(max_adapters=2)

    async def go() -> None:
        await registry.ensure_loaded(replica, "a")
        await registry.ensure_loaded(replica, "b")
        await registry.ensure_loaded(replica, "a")  # touch: b is now least recently used
        await registry.ensure_loaded(replica, "c")  # evicts b
        assert registry.resident("r0") == {"a", "c"}
        registry.pin("r0", "a")  # a is in use...
        await registry.ensure_loaded(replica, "d")  # ...so c goes although a is older
        assert registry.resident("r0") == {"a", "d"}
        registry.pin("r0", "d")
        with pytest.raises(BackendError) as e:
            await registry.ensure_loaded(replica, "b")
        assert e.value.retryable and "slots are in use" in str(e.value)
        registry.unpin("r0", "d")
        await registry.ensure_loaded(replica, "b")
        assert registry.resident("r0") == {"a", "b"}

    asyncio.run(go())
    assert [c for c in backend.calls if c[0] == "unload"] == [("unload", "b"), ("unload", "c"), ("unload", "d")]
    assert len(backend.loaded) <= 2


def test_failed_load_is_clear_and_does_not_block_others() -> None:
    registry, replica, backend = setup()

    async def go() -> None:
        results = await asyncio.gather(registry.ensure_loaded(replica, "bad"), registry.ensure_loaded(replica, "a"),
                                       return_exceptions=True)
        assert isinstance(results[0], AdapterLoadError) and "max_lora_rank" in str(results[0])
        assert str(results[0]).startswith("adapter 'bad' failed to load on backend 'r0'")
        assert results[1] is None
        with pytest.raises(AdapterLoadError):  # not cached as failed: a later request tries again
            await registry.ensure_loaded(replica, "bad")

    asyncio.run(go())
    assert registry.resident("r0") == {"a"}
    assert backend.calls.count(("load", "bad")) == 2


def test_load_is_checked_against_the_model_list() -> None:
    registry, replica, backend = setup()
    backend.hide.add("hidden")

    async def go() -> None:
        with pytest.raises(BackendError, match="does not list it"):
            await registry.ensure_loaded(replica, "hidden")

    asyncio.run(go())
    assert registry.resident("r0") == frozenset()


def test_a_cancelled_requester_does_not_cancel_the_shared_load() -> None:
    registry, replica, backend = setup()
    backend.load_delay_s = 0.2

    async def go() -> None:
        first = asyncio.create_task(registry.ensure_loaded(replica, "a"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(registry.ensure_loaded(replica, "a"))
        first.cancel()
        await second

    asyncio.run(go())
    assert registry.resident("r0") == {"a"} and backend.calls == [("load", "a")]


def test_sync_and_forget() -> None:
    registry, _, _ = setup()
    registry.sync("r0", ["b", "a", "undeclared"])
    assert registry.resident("r0") == {"a", "b"}
    registry.forget("r0", "a")
    assert registry.resident("r0") == {"b"}


def test_the_last_replica_waits_for_a_busy_slot() -> None:
    """With every slot in use, a request that has no other replica left waits for a slot rather than failing
    (the soak of issue #10 found 503s under a sustainable multi-adapter load on one replica)."""
    registry, replica, backend = setup(max_adapters=1)

    async def go() -> None:
        await registry.ensure_loaded(replica, "a")
        registry.pin("r0", "a")
        waiter = asyncio.create_task(registry.ensure_loaded(replica, "b", wait_for_slot=True))
        await asyncio.sleep(0.2)
        assert not waiter.done() and registry.resident("r0") == {"a"}
        registry.unpin("r0", "a")
        await asyncio.wait_for(waiter, 5)
        assert registry.resident("r0") == {"b"}

    asyncio.run(go())
    assert backend.calls == [("load", "a"), ("unload", "a"), ("load", "b")]
