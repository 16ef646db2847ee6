"""serve/routing/least_loaded.py."""

from __future__ import annotations

from serve.routing import ReplicaStats, RouteContext, RouteReason
from serve.routing.least_loaded import LeastLoaded


def test_picks_fewest_outstanding_counting_engine_queue() -> None:
    reps = (ReplicaStats("a", num_in_flight=2), ReplicaStats("b", num_in_flight=1, num_waiting=3), ReplicaStats("c", num_in_flight=3))
    d = LeastLoaded().choose(RouteContext(0, "m", None, reps))
    assert (d.replica, d.reason) == ("a", RouteReason.LEAST_LOADED)


def test_load_is_relative_to_weight() -> None:
    reps = (ReplicaStats("small", num_in_flight=2), ReplicaStats("big", weight=4.0, num_in_flight=6))
    assert LeastLoaded().choose(RouteContext(0, "m", None, reps)).replica == "big"


def test_ties_rotate_so_an_idle_fleet_fills_evenly(make_fleet) -> None:
    fleet = make_fleet("a", "b", "c", "d")
    for _ in range(40):
        fleet.send(LeastLoaded())
    assert set(fleet.placements.values()) == {10}


def test_balances_when_requests_finish_at_different_rates(make_fleet) -> None:
    fleet = make_fleet("a", "b")
    for k in range(200):
        name = fleet.send(LeastLoaded())
        if name == "a" or k % 3 == 0:  # "a" finishes at once, "b" holds on to most requests
            fleet.finish(name)
    assert fleet.in_flight["b"] <= fleet.in_flight["a"] + 1
    assert fleet.placements["a"] > fleet.placements["b"]
