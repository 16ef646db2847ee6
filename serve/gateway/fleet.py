"""The replicas behind the gateway and what it knows about each: health, its own in-flight count, the last
scraped engine metrics. Mutable state owned by one app (on ``app.state``), changed only by the gateway's
handlers, the health monitor and the admin API."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from serve.backends.base import Backend, BackendSpec, EngineMetrics
from serve.routing import ReplicaStats
from serve.routing.prefix_index import PrefixIndex


@dataclass(slots=True)
class Replica:
    """Runtime state of one engine replica."""

    spec: BackendSpec
    backend: Backend
    is_healthy: bool = False  #: passes health checks; unhealthy replicas get no new requests
    is_removed: bool = False  #: removed through the admin API; in-flight requests still finish
    num_in_flight: int = 0  #: requests this gateway has outstanding there (the authoritative load signal)
    num_failed_checks: int = 0  #: consecutive failed health checks
    metrics: EngineMetrics | None = None  #: last successful scrape

    @property
    def name(self) -> str:
        return self.spec.name


class Fleet:
    """All replicas by name, in configuration order."""

    def __init__(self, replicas: Iterable[Replica] = ()) -> None:
        self._replicas: dict[str, Replica] = {}
        for r in replicas:
            self.add(r)

    def __iter__(self):
        return iter(list(self._replicas.values()))

    def __len__(self) -> int:
        return len(self._replicas)

    def add(self, replica: Replica) -> None:
        if replica.name in self._replicas:
            raise ValueError(f"backend '{replica.name}' already exists")
        self._replicas[replica.name] = replica

    def remove(self, name: str) -> Replica | None:
        replica = self._replicas.pop(name, None)
        if replica is not None:
            replica.is_removed = True
        return replica

    def get(self, name: str) -> Replica | None:
        return self._replicas.get(name)

    def base_models(self) -> set[str]:
        return {r.spec.base_model for r in self._replicas.values()}

    def candidates(self, base_model: str, exclude: Sequence[str] = ()) -> list[Replica]:
        """Healthy replicas of ``base_model`` not in ``exclude``."""
        return [r for r in self._replicas.values()
                if r.is_healthy and not r.is_removed and r.spec.base_model == base_model and r.name not in exclude]


def replica_stats(replica: Replica, resident: frozenset[str], prefix_keys: Sequence[int], index: PrefixIndex) -> ReplicaStats:
    """The routing snapshot of one replica for one request."""
    m = replica.metrics
    return ReplicaStats(
        name=replica.name, weight=replica.spec.weight, num_in_flight=replica.num_in_flight,
        num_waiting=(m.num_waiting or 0) if m else 0, num_running=(m.num_running or 0) if m else 0,
        kv_cache_usage=m.kv_cache_usage if m else None, resident_adapters=resident,
        max_resident_adapters=replica.spec.max_adapters,
        num_cached_prefix_blocks=index.num_cached_blocks(prefix_keys, replica.name) if prefix_keys else 0,
        num_prefix_blocks=index.num_blocks(replica.name))
