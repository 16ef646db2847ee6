"""Routing policies of the gateway: pure functions of a :class:`RouteContext` snapshot.

``POLICIES`` maps each policy's config name to its class; :func:`make_policy` builds one from config values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lorafleet.errors import ConfigError
from serve.routing.base import RoutingPolicy
from serve.routing.hybrid import Hybrid
from serve.routing.least_loaded import LeastLoaded
from serve.routing.lora_affinity import LoraAffinity
from serve.routing.prefix_aware import PrefixAware
from serve.routing.round_robin import RoundRobin
from serve.routing.types import ReplicaStats, RouteContext, RouteDecision, RouteReason

POLICIES: dict[str, type] = {
    "round_robin": RoundRobin,
    "least_loaded": LeastLoaded,
    "lora_affinity": LoraAffinity,
    "prefix_aware": PrefixAware,
    "hybrid": Hybrid,
}
DEFAULT_POLICY = "hybrid"


def make_policy(name: str, params: Mapping[str, Any] | None = None) -> RoutingPolicy:
    """The policy registered as ``name`` with settings ``params``; :class:`ConfigError` names what is wrong."""
    if name not in POLICIES:
        raise ConfigError(f"routing.policy must be one of {sorted(POLICIES)}, got '{name}'")
    cls = POLICIES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ConfigError(f"routing.params: policy '{name}' has no setting(s) {unknown}; it takes {sorted(known)}")
    try:
        return cls(**dict(params or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"routing.params: {e}") from None


__all__ = ["POLICIES", "DEFAULT_POLICY", "make_policy", "RoutingPolicy", "ReplicaStats", "RouteContext",
           "RouteDecision", "RouteReason"]
