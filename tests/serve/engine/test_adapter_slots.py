"""serve/engine/adapter_slots.py: LRU over LoRA slots, pins block eviction, None when all are pinned."""

from __future__ import annotations

from serve.engine.adapter_slots import AdapterSlots, SlotAssignment


def test_first_use_loads_into_free_slots() -> None:
    slots = AdapterSlots(2)
    assert slots.try_acquire("a") == SlotAssignment(0, needs_load=True)
    assert slots.try_acquire("b") == SlotAssignment(1, needs_load=True)
    assert slots.try_acquire("a") == SlotAssignment(0, needs_load=False)
    assert slots.slot_of("a") == 0 and slots.slot_of("zzz") is None


def test_least_recently_used_unpinned_adapter_is_evicted() -> None:
    slots = AdapterSlots(2)
    slots.try_acquire("a")
    slots.try_acquire("b")
    slots.try_acquire("a")  # a is now the most recently used
    for name in ("a", "a", "b"):
        slots.release(name)
    got = slots.try_acquire("c")
    assert got == SlotAssignment(1, needs_load=True, evicted="b")
    assert slots.resident == ["a", "c"]
    slots.release("c")
    assert slots.try_acquire("d") == SlotAssignment(0, needs_load=True, evicted="a")


def test_pinned_adapters_are_never_evicted() -> None:
    slots = AdapterSlots(2)
    slots.try_acquire("a")  # pinned (in use)
    slots.try_acquire("b")
    slots.release("b")
    assert slots.try_acquire("c") == SlotAssignment(1, needs_load=True, evicted="b")
    assert slots.try_acquire("d") is None, "every slot is pinned"
    assert slots.resident == ["a", "c"]
    slots.release("a")
    assert slots.try_acquire("d") == SlotAssignment(0, needs_load=True, evicted="a")


def test_pins_count_every_user() -> None:
    slots = AdapterSlots(1)
    slots.try_acquire("a")
    slots.try_acquire("a")
    slots.release("a")
    assert slots.try_acquire("b") is None, "a still has one user"
    slots.release("a")
    assert slots.try_acquire("b") is not None
    slots.release("unknown")  # harmless


def test_explicit_evict_refuses_pinned() -> None:
    slots = AdapterSlots(2)
    slots.try_acquire("a")
    assert slots.evict("a") is None
    slots.release("a")
    assert slots.evict("a") == 0
    assert slots.resident == [] and slots.evict("a") is None
    assert slots.try_acquire("b").slot == 0, "the freed slot is reused"


def test_zero_slots() -> None:
    assert AdapterSlots(0).try_acquire("a") is None
