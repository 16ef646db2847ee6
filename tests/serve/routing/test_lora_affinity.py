"""serve/routing/lora_affinity.py."""

from __future__ import annotations

import random

from serve.routing import ReplicaStats, RouteContext, RouteReason
from serve.routing.lora_affinity import LoraAffinity
from serve.routing.round_robin import RoundRobin


def R(name: str, *adapters: str, **kw) -> ReplicaStats:
    return ReplicaStats(name, resident_adapters=frozenset(adapters), **kw)


def test_prefers_the_replica_holding_the_adapter() -> None:
    reps = (R("a", "x", num_in_flight=1), R("b", "y"))
    d = LoraAffinity().choose(RouteContext(0, "m", "y", reps))
    assert (d.replica, d.reason) == ("b", RouteReason.ADAPTER_RESIDENT)
    assert LoraAffinity().choose(RouteContext(0, "m", "x", reps)).replica == "a"


def test_loads_where_a_slot_is_free_rather_than_evicting() -> None:
    reps = (R("full", "p", "q", max_resident_adapters=2), R("roomy", "r", max_resident_adapters=2, num_in_flight=1))
    d = LoraAffinity().choose(RouteContext(0, "m", "new", reps))
    assert (d.replica, d.reason) == ("roomy", RouteReason.ADAPTER_FREE_SLOT)


def test_falls_back_to_least_loaded_when_every_replica_is_full() -> None:
    reps = (R("a", "p", max_resident_adapters=1, num_in_flight=2), R("b", "q", max_resident_adapters=1))
    d = LoraAffinity().choose(RouteContext(0, "m", "new", reps))
    assert (d.replica, d.reason) == ("b", RouteReason.LEAST_LOADED)


def test_base_model_requests_go_to_the_least_loaded() -> None:
    reps = (R("a", "x", num_in_flight=3), R("b"))
    assert LoraAffinity().choose(RouteContext(0, "m", None, reps)).replica == "b"


def test_a_hot_adapter_spills_once_its_replica_is_over_the_bound() -> None:
    reps = (R("hot", "x", num_in_flight=2), R("cold"))
    # total 2 (+1): share 1.5, bound ceil(1.5 * 1.5) = 3 -> "hot" may still take its 3rd request
    assert LoraAffinity().choose(RouteContext(0, "m", "x", reps)).replica == "hot"
    reps = (R("hot", "x", num_in_flight=3), R("cold"))
    d = LoraAffinity().choose(RouteContext(0, "m", "x", reps))
    assert (d.replica, d.reason) == ("cold", RouteReason.SPILL)


def test_three_times_fewer_loads_than_round_robin_on_six_adapters(make_fleet) -> None:
    """Six adapters in random order over two replicas with room for four each: round robin sends every adapter
    everywhere and thrashes the LRU; affinity loads each adapter about once."""
    rng = random.Random(0)
    sequence = [f"ad{rng.randrange(6)}" for _ in range(600)]
    loads = {}
    for name, policy in (("round_robin", RoundRobin()), ("lora_affinity", LoraAffinity())):
        fleet = make_fleet("r0", "r1", max_resident=4)
        for k, adapter in enumerate(sequence):
            replica = fleet.send(policy, adapter)
            if k % 2:  # two requests in flight at a time
                fleet.finish(replica)
                for r in ("r0", "r1"):
                    while fleet.in_flight[r] > 1:
                        fleet.finish(r)
        loads[name] = fleet.num_adapter_loads
    assert loads["lora_affinity"] * 3 <= loads["round_robin"], loads


def test_rejects_a_bound_below_one() -> None:
    import pytest

    with pytest.raises(ValueError):
        LoraAffinity(load_factor=0.5)
