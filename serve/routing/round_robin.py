"""Round robin: request ``k`` goes to candidate ``k mod n``. Ignores load, adapters and prefixes."""

from __future__ import annotations

from dataclasses import dataclass

from serve.routing.types import RouteContext, RouteDecision, RouteReason


@dataclass(frozen=True, slots=True)
class RoundRobin:
    """The baseline. Unweighted; the position is the gateway's request counter, so the policy stays pure."""

    def choose(self, ctx: RouteContext) -> RouteDecision:
        if len(ctx.replicas) == 1:
            return RouteDecision(ctx.replicas[0].name, RouteReason.ONLY_CANDIDATE)
        return RouteDecision(ctx.replicas[ctx.request_index % len(ctx.replicas)].name, RouteReason.ROUND_ROBIN)
