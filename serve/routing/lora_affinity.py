"""LoRA affinity: send an adapter's requests where the adapter is already loaded, so adapters are loaded
(and evicted) as rarely as possible, without letting one hot adapter overload its replica."""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.routing.least_loaded import least_loaded_index
from serve.routing.scores import check_settings, within_bound
from serve.routing.types import RouteContext, RouteDecision, RouteReason


@dataclass(frozen=True, slots=True)
class LoraAffinity:
    """Preference, among replicas within the load bound: adapter resident > free adapter slot > least loaded."""

    load_factor: float = field(default=1.5, metadata={"help": "Load bound factor (>= 1): a replica may hold at most "
                                                              "this times its weighted share of outstanding requests."})
    min_bound: int = field(default=2, metadata={"help": "A replica holding fewer requests than this is never over "
                                                        "the load bound."})

    def __post_init__(self) -> None:
        check_settings(self.load_factor, self.min_bound)

    def choose(self, ctx: RouteContext) -> RouteDecision:
        reps = ctx.replicas
        if len(reps) == 1:
            return RouteDecision(reps[0].name, RouteReason.ONLY_CANDIDATE)
        ok = within_bound(reps, self.load_factor, self.min_bound)
        allowed = [i for i in range(len(reps)) if ok[i]]
        if ctx.adapter is None:
            return RouteDecision(reps[least_loaded_index(reps, ctx.request_index, allowed)].name, RouteReason.LEAST_LOADED)
        resident = {i for i, r in enumerate(reps) if ctx.adapter in r.resident_adapters}
        if usable := [i for i in allowed if i in resident]:
            return RouteDecision(reps[least_loaded_index(reps, ctx.request_index, usable)].name, RouteReason.ADAPTER_RESIDENT)
        # Not resident on any replica within the bound: it must be loaded somewhere; avoid evicting another one.
        reason = RouteReason.SPILL if resident else None
        if free := [i for i in allowed if reps[i].has_free_adapter_slot()]:
            return RouteDecision(reps[least_loaded_index(reps, ctx.request_index, free)].name,
                                 reason or RouteReason.ADAPTER_FREE_SLOT)
        return RouteDecision(reps[least_loaded_index(reps, ctx.request_index, allowed)].name,
                             reason or RouteReason.LEAST_LOADED)
