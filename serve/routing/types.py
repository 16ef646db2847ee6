"""The boundary between the gateway and its routing policies: a stats snapshot in, a decision out.

The gateway builds one :class:`RouteContext` per request from state it owns (its own in-flight counters, the
last metrics scraped from each replica, adapter residency, its prefix index). Policies read it and never
see a FastAPI ``Request``, a backend object or anything mutable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class RouteReason(str, Enum):
    """Why a policy picked its replica (exported as a metric label and useful in logs)."""

    ONLY_CANDIDATE = "only_candidate"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    ADAPTER_RESIDENT = "adapter_resident"  #: the adapter is already loaded there
    ADAPTER_FREE_SLOT = "adapter_free_slot"  #: not loaded anywhere usable; this replica can load it without evicting
    PREFIX_MATCH = "prefix_match"  #: the replica most recently served the longest part of this prompt's prefix
    PREFIX_HASH = "prefix_hash"  #: a new prefix, placed on its consistent-hash home
    PREFIX_BALANCE = "prefix_balance"  #: a new prefix, placed on the replica with the least cached prefix blocks
    SPILL = "spill"  #: the preferred replicas were over the load bound


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """What the gateway knows about one candidate replica when a request arrives.

    Every count is a number of requests unless the name says otherwise.
    """

    name: str  #: backend id from the gateway config
    weight: float = 1.0  #: relative capacity; a replica of weight 2 is meant to take twice the load
    num_in_flight: int = 0  #: requests this gateway has sent there and not yet finished (counted by the gateway)
    num_waiting: int = 0  #: queue depth reported by the engine's /metrics at the last scrape (0 if unknown)
    num_running: int = 0  #: running requests reported by the engine at the last scrape (0 if unknown)
    kv_cache_usage: float | None = None  #: KV-cache usage in [0, 1] at the last scrape, None if unknown
    resident_adapters: frozenset[str] = frozenset()  #: adapters loaded there (as far as the gateway knows)
    max_resident_adapters: int | None = None  #: adapters that fit at once before one must be unloaded; None: no limit
    num_cached_prefix_blocks: int = 0  #: leading blocks of this request's prefix the gateway last sent there
    #: prefix blocks of all requests the gateway sent there and still remembers: its estimate of how full the
    #: replica's prefix cache is, used to place new prefixes where there is room
    num_prefix_blocks: int = 0

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"weight of replica '{self.name}' must be positive, got {self.weight}")
        if min(self.num_in_flight, self.num_waiting, self.num_running, self.num_cached_prefix_blocks,
               self.num_prefix_blocks) < 0:
            raise ValueError(f"counts of replica '{self.name}' must be non-negative")

    @property
    def load(self) -> int:
        """Outstanding work: the gateway's own in-flight count plus the engine's reported queue.

        The in-flight count is exact and current; the queue depth is stale by up to one scrape but also sees
        traffic from other gateways. Queued requests sent by this gateway count twice, which deliberately
        pushes new work away from a replica that has started queueing.
        """
        return self.num_in_flight + self.num_waiting

    def has_free_adapter_slot(self) -> bool:
        return self.max_resident_adapters is None or len(self.resident_adapters) < self.max_resident_adapters


@dataclass(frozen=True, slots=True)
class RouteContext:
    """One request's routing question.

    ``replicas`` holds only usable candidates: healthy, serving ``model``, not already tried for this request.
    """

    request_index: int  #: gateway-wide request counter; round-robin position and tie-break rotation
    model: str  #: base model the request needs
    adapter: str | None  #: adapter the request needs, None for the base model
    replicas: tuple[ReplicaStats, ...]
    #: chained hashes of the prompt's block-aligned prefix (see scores.prefix_keys); empty if unknown
    prefix_keys: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ValueError("RouteContext needs at least one candidate replica")
        names = [r.name for r in self.replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique, got {names}")


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The replica a policy chose and why."""

    replica: str  #: name of the chosen replica, one of ``RouteContext.replicas``
    reason: RouteReason
