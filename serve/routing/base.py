"""The one extension point of routing: :class:`RoutingPolicy`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from serve.routing.types import RouteContext, RouteDecision


@runtime_checkable
class RoutingPolicy(Protocol):
    """Chooses a replica for one request.

    ``choose`` is synchronous and pure: the same context gives the same decision, it does no I/O and keeps no
    state between calls (anything that must persist, such as the round-robin position or which replica saw a
    prefix, comes in through the context). A policy's settings are the fields of its frozen dataclass.
    """

    def choose(self, ctx: RouteContext) -> RouteDecision:
        """Pick one of ``ctx.replicas`` (never empty)."""
        ...
