"""A tiny fleet simulator for the routing tests: it plays the gateway's part (in-flight counts, adapter
residency with LRU unloading, the prefix index) around a policy, so tests can check what a policy does over
many requests, not just one decision."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from serve.routing import ReplicaStats, RouteContext, RoutingPolicy
from serve.routing.prefix_index import PrefixIndex
from serve.routing.scores import text_prefix_keys


@dataclass
class Fleet:
    names: tuple[str, ...]
    max_resident: int | None = None
    weights: dict[str, float] = field(default_factory=dict)
    in_flight: Counter = field(default_factory=Counter)
    resident: dict[str, OrderedDict] = field(default_factory=dict)
    index: PrefixIndex = field(default_factory=PrefixIndex)
    cache_blocks: int | None = None  #: prefix-cache capacity of each replica in blocks (LRU); None: unlimited
    cache: dict[str, OrderedDict] = field(default_factory=dict)
    num_hit_blocks: int = 0  #: prompt blocks found in the chosen replica's cache
    num_prompt_blocks: int = 0
    num_adapter_loads: int = 0
    num_requests: int = 0
    placements: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.resident = {n: OrderedDict() for n in self.names}
        self.cache = {n: OrderedDict() for n in self.names}

    @property
    def hit_rate(self) -> float:
        return self.num_hit_blocks / max(1, self.num_prompt_blocks)

    def stats(self, keys: Sequence[int]) -> tuple[ReplicaStats, ...]:
        return tuple(ReplicaStats(n, weight=self.weights.get(n, 1.0), num_in_flight=self.in_flight[n],
                                  resident_adapters=frozenset(self.resident[n]), max_resident_adapters=self.max_resident,
                                  num_cached_prefix_blocks=self.index.num_cached_blocks(keys, n),
                                  num_prefix_blocks=self.index.num_blocks(n)) for n in self.names)

    def send(self, policy: RoutingPolicy, adapter: str | None = None, keys: Sequence[int] = (), model: str = "m") -> str:
        """Route one request and apply its effects; the request stays in flight until :meth:`finish`."""
        ctx = RouteContext(self.num_requests, model, adapter, self.stats(keys), tuple(keys))
        name = policy.choose(ctx).replica
        self.num_requests += 1
        self.in_flight[name] += 1
        self.placements[name] += 1
        self.index.record(keys, name)
        self._use_cache(name, keys)
        if adapter is not None:
            slots = self.resident[name]
            if adapter in slots:
                slots.move_to_end(adapter)
            else:
                self.num_adapter_loads += 1
                if self.max_resident is not None and len(slots) >= self.max_resident:
                    slots.popitem(last=False)
                slots[adapter] = True
        return name

    def _use_cache(self, name: str, keys: Sequence[int]) -> None:
        """The engine side: count the leading blocks already cached, then cache all of them (LRU)."""
        cache = self.cache[name]
        hits = 0
        while hits < len(keys) and keys[hits] in cache:
            hits += 1
        self.num_hit_blocks += hits
        self.num_prompt_blocks += len(keys)
        for k in keys:
            cache[k] = True
            cache.move_to_end(k)
        while self.cache_blocks is not None and len(cache) > self.cache_blocks:
            cache.popitem(last=False)

    def finish(self, name: str) -> None:
        self.in_flight[name] -= 1


@pytest.fixture
def make_fleet() -> Callable[..., Fleet]:
    return lambda *names, **kw: Fleet(tuple(names), **kw)


def keys_of(text: str, salt: str = "m") -> tuple[int, ...]:
    """Prefix keys of ``text`` in 32-character blocks (at most 64)."""
    return text_prefix_keys(text, 32, 64, salt)


@pytest.fixture
def prefix_keys() -> Callable[..., tuple[int, ...]]:
    return keys_of
