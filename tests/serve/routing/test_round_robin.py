"""serve/routing/round_robin.py."""

from __future__ import annotations

from serve.routing import ReplicaStats, RouteContext, RouteReason
from serve.routing.round_robin import RoundRobin


def test_cycles_through_candidates_in_order() -> None:
    reps = (ReplicaStats("a"), ReplicaStats("b"), ReplicaStats("c"))
    picks = [RoundRobin().choose(RouteContext(k, "m", None, reps)).replica for k in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_ignores_load_and_adapters() -> None:
    reps = (ReplicaStats("a", num_in_flight=100), ReplicaStats("b", resident_adapters=frozenset({"x"})))
    assert RoundRobin().choose(RouteContext(0, "m", "x", reps)).replica == "a"


def test_single_candidate() -> None:
    d = RoundRobin().choose(RouteContext(7, "m", None, (ReplicaStats("only"),)))
    assert (d.replica, d.reason) == ("only", RouteReason.ONLY_CANDIDATE)


def test_is_pure(make_fleet) -> None:
    ctx = RouteContext(3, "m", None, (ReplicaStats("a"), ReplicaStats("b")))
    policy = RoundRobin()
    assert {policy.choose(ctx) for _ in range(5)} == {policy.choose(ctx)}
