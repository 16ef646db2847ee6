"""Least loaded: the replica with the least outstanding work per unit of weight."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve.routing.scores import relative_load, rotation
from serve.routing.types import ReplicaStats, RouteContext, RouteDecision, RouteReason


def least_loaded_index(replicas: Sequence[ReplicaStats], request_index: int, among: Sequence[int] | None = None) -> int:
    """Index of the replica (restricted to ``among`` if given) with the lowest load per weight.

    Ties rotate with ``request_index``, so an idle fleet is filled evenly rather than always from the first
    replica.
    """
    idx = range(len(replicas)) if among is None else among
    n = len(replicas)
    return min(idx, key=lambda i: (relative_load(replicas[i]), rotation(i, n, request_index)))


@dataclass(frozen=True, slots=True)
class LeastLoaded:
    """Load is the gateway's in-flight count plus the engine's queue depth (see ``ReplicaStats.load``)."""

    def choose(self, ctx: RouteContext) -> RouteDecision:
        if len(ctx.replicas) == 1:
            return RouteDecision(ctx.replicas[0].name, RouteReason.ONLY_CANDIDATE)
        return RouteDecision(ctx.replicas[least_loaded_index(ctx.replicas, ctx.request_index)].name,
                             RouteReason.LEAST_LOADED)
