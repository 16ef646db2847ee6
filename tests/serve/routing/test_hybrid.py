"""serve/routing/hybrid.py: the default policy's order of preferences and its load bound."""

from __future__ import annotations

import random

from serve.routing import ReplicaStats, RouteContext, RouteReason
from serve.routing.hybrid import Hybrid
from serve.routing.round_robin import RoundRobin

KEYS = tuple(range(1000, 1012))


def R(name: str, *adapters: str, **kw) -> ReplicaStats:
    return ReplicaStats(name, resident_adapters=frozenset(adapters), **kw)


def test_adapter_residency_beats_prefix_and_load() -> None:
    reps = (R("prefix", num_cached_prefix_blocks=12), R("adapter", "x", num_in_flight=1), R("idle"))
    d = Hybrid().choose(RouteContext(0, "m", "x", reps, KEYS))
    assert (d.replica, d.reason) == ("adapter", RouteReason.ADAPTER_RESIDENT)


def test_prefix_match_beats_load_among_adapter_holders() -> None:
    reps = (R("a", "x", num_in_flight=1, num_cached_prefix_blocks=12), R("b", "x"))
    d = Hybrid().choose(RouteContext(0, "m", "x", reps, KEYS))
    assert (d.replica, d.reason) == ("a", RouteReason.ADAPTER_RESIDENT)
    d = Hybrid().choose(RouteContext(0, "m", None, reps, KEYS))
    assert (d.replica, d.reason) == ("a", RouteReason.PREFIX_MATCH)


def test_new_adapter_goes_where_it_evicts_nothing() -> None:
    reps = (R("full", "p", max_resident_adapters=1), R("free", num_in_flight=1, max_resident_adapters=1))
    d = Hybrid().choose(RouteContext(0, "m", "new", reps, ()))
    assert (d.replica, d.reason) == ("free", RouteReason.ADAPTER_FREE_SLOT)


def test_plain_requests_are_balanced() -> None:
    reps = (R("a", num_in_flight=3), R("b", num_in_flight=1))
    d = Hybrid().choose(RouteContext(0, "m", None, reps, ()))
    assert (d.replica, d.reason) == ("b", RouteReason.LEAST_LOADED)


def test_over_the_bound_it_spills() -> None:
    reps = (R("a", "x", num_in_flight=8, num_cached_prefix_blocks=12), R("b"))
    d = Hybrid().choose(RouteContext(0, "m", "x", reps, KEYS))
    assert (d.replica, d.reason) == ("b", RouteReason.SPILL)


def test_hot_adapter_and_prefix_spread_under_concurrency(make_fleet, prefix_keys) -> None:
    fleet = make_fleet("a", "b", "c", "d", max_resident=2)
    for q in range(80):
        fleet.send(Hybrid(), adapter="hot", keys=prefix_keys("S" * 400 + str(q)))
    assert len(fleet.placements) >= 3
    assert max(fleet.in_flight.values()) <= 30  # ceil(1.5 * 80 / 4)


def test_fewer_adapter_loads_and_more_prefix_hits_than_round_robin(make_fleet, prefix_keys) -> None:
    rng = random.Random(1)
    results = {}
    for name, policy in (("round_robin", RoundRobin()), ("hybrid", Hybrid())):
        fleet = make_fleet("r0", "r1", max_resident=4, cache_blocks=50)
        for q in range(400):
            tenant = rng.randrange(6)
            fleet.send(policy, adapter=f"ad{tenant}", keys=prefix_keys(f"tenant {tenant} system prompt. " * 20 + f"q{q}",
                                                                       salt=f"ad{tenant}"))
            if q % 2:
                for n in fleet.names:
                    while fleet.in_flight[n]:
                        fleet.finish(n)
        results[name] = (fleet.num_adapter_loads, fleet.hit_rate)
    assert results["hybrid"][0] * 3 <= results["round_robin"][0], results
    assert results["hybrid"][1] >= 1.5 * results["round_robin"][1], results
