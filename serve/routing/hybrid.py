"""The default policy: LoRA affinity, then prefix affinity, then load, all within one load bound.

Among replicas within the bounded-load limit the ranking is, in order:

1. the request's adapter is resident (an adapter load costs a round trip and can evict another adapter);
2. the longest meaningful cached-prefix match (see ``prefix_aware.meaningful_match``);
3. for a long prefix seen nowhere yet, the replica with the fewest cached prefix blocks, ties broken by its
   rendezvous-hash home (concurrent first requests agree: the first one is recorded before the next routes);
4. a free adapter slot, when the adapter must be loaded (so nothing is evicted);
5. the least load per weight, ties rotating.

The load bound is what keeps the cache-aware parts from collapsing all traffic onto the replica that holds a
hot prefix or adapter: a replica at its bound is skipped until the others catch up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.routing.prefix_aware import meaningful_match, placement_reason
from serve.routing.scores import check_settings, hash_key, placement_order, relative_load, rotation, within_bound
from serve.routing.types import RouteContext, RouteDecision, RouteReason


@dataclass(frozen=True, slots=True)
class Hybrid:
    load_factor: float = field(default=1.5, metadata={"help": "Load bound factor (>= 1): a replica may hold at most "
                                                              "this times its weighted share of outstanding requests."})
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
        n = len(reps)
        adapter = ctx.adapter
        resident = [adapter is None or adapter in r.resident_adapters for r in reps]
        matches = [meaningful_match(r.num_cached_prefix_blocks, len(ctx.prefix_keys), self.hash_blocks) for r in reps]
        key = hash_key(ctx.prefix_keys, self.hash_blocks)
        home_rank = [0] * n
        if key is not None:
            for rank, i in enumerate(placement_order(key, reps, self.placement == "least_cached")):
                home_rank[i] = rank

        def rank(i: int) -> tuple:
            r = reps[i]
            needs_slot = not resident[i] and not r.has_free_adapter_slot()
            return (not resident[i], -matches[i], home_rank[i], needs_slot, relative_load(r), rotation(i, n, ctx.request_index))

        ok = within_bound(reps, self.load_factor, self.min_bound)
        chosen = min((i for i in range(n) if ok[i]), key=rank)
        unbounded = min(range(n), key=rank)
        if rank(unbounded)[:3] < rank(chosen)[:3]:
            reason = RouteReason.SPILL
        elif adapter is not None and resident[chosen]:
            reason = RouteReason.ADAPTER_RESIDENT
        elif matches[chosen] > 0:
            reason = RouteReason.PREFIX_MATCH
        elif key is not None:
            reason = placement_reason(key, reps, chosen)
        elif adapter is not None and reps[chosen].has_free_adapter_slot():
            reason = RouteReason.ADAPTER_FREE_SLOT
        else:
            reason = RouteReason.LEAST_LOADED
        return RouteDecision(reps[chosen].name, reason)
