"""Prefix-aware routing: requests that share a prompt prefix go where that prefix is cached, bounded by load.

Signals, all from the gateway: ``ReplicaStats.num_cached_prefix_blocks`` (longest-prefix match against the
gateway's record of what it sent where) and, for a prefix seen nowhere yet, the replica whose cache holds the
fewest prefix blocks (``num_prefix_blocks``), ties broken by rendezvous hashing of the prefix. The first
request of a new prefix is recorded before the next one is routed, so concurrent first requests agree on one
home. Every choice is limited to replicas within the bounded-load limit, so one hot prefix spreads over more
replicas instead of collapsing onto one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.routing.least_loaded import least_loaded_index
from serve.routing.scores import check_settings, hash_key, placement_order, rendezvous_order, within_bound
from serve.routing.types import RouteContext, RouteDecision, RouteReason


def placement_reason(key: int, replicas, chosen: int) -> RouteReason:
    """PREFIX_HASH if ``chosen`` is the prefix's rendezvous home, else PREFIX_BALANCE (placed for room)."""
    return RouteReason.PREFIX_HASH if rendezvous_order(key, replicas)[0] == chosen else RouteReason.PREFIX_BALANCE


def meaningful_match(num_blocks: int, num_prefix_blocks: int, hash_blocks: int) -> int:
    """``num_blocks`` if a match that long is worth following, else 0.

    A match counts when it covers ``hash_blocks`` blocks, or the whole prefix if that is shorter; matching
    only a common header (say a chat template's first block) says nothing about the rest of the prompt.
    """
    return num_blocks if num_blocks >= min(hash_blocks, num_prefix_blocks) and num_blocks > 0 else 0


@dataclass(frozen=True, slots=True)
class PrefixAware:
    load_factor: float = field(default=1.25, metadata={"help": "Load bound factor (>= 1) of consistent hashing with "
                                                               "bounded loads."})
    hash_blocks: int = field(default=4, metadata={"help": "Prefix blocks that identify a prefix for placement and the "
                                                          "shortest match that is followed."})
    min_bound: int = field(default=2, metadata={"help": "A replica holding fewer requests than this is never over "
                                                        "the load bound."})
    placement: str = field(default="least_cached", metadata={"help": "Where a prefix seen nowhere goes: 'least_cached' "
                                                                     "(fewest cached prefix blocks per weight, ties by "
                                                                     "hash) or 'hash' (rendezvous hashing only)."})

    def __post_init__(self) -> None:
        check_settings(self.load_factor, self.min_bound, self.hash_blocks, self.placement)

    def choose(self, ctx: RouteContext) -> RouteDecision:
        reps = ctx.replicas
        if len(reps) == 1:
            return RouteDecision(reps[0].name, RouteReason.ONLY_CANDIDATE)
        ok = within_bound(reps, self.load_factor, self.min_bound)
        allowed = [i for i in range(len(reps)) if ok[i]]
        matches = [meaningful_match(r.num_cached_prefix_blocks, len(ctx.prefix_keys), self.hash_blocks) for r in reps]
        best_allowed = max(matches[i] for i in allowed)
        if best_allowed > 0:
            tied = [i for i in allowed if matches[i] == best_allowed]
            reason = RouteReason.PREFIX_MATCH if best_allowed == max(matches) else RouteReason.SPILL
            return RouteDecision(reps[least_loaded_index(reps, ctx.request_index, tied)].name, reason)
        key = hash_key(ctx.prefix_keys, self.hash_blocks)
        if key is not None:
            order = placement_order(key, reps, self.placement == "least_cached")
            first = next(i for i in order if ok[i])
            if first != order[0] or max(matches) > 0:
                return RouteDecision(reps[first].name, RouteReason.SPILL)
            return RouteDecision(reps[first].name, placement_reason(key, reps, first))
        reason = RouteReason.SPILL if max(matches) > 0 else RouteReason.LEAST_LOADED
        return RouteDecision(reps[least_loaded_index(reps, ctx.request_index, allowed)].name, reason)
