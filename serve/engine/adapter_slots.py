"""Which adapter sits in which LoRA slot: an LRU over ``num_slots`` slots with pin counts (no torch).

An adapter is pinned while unfinished sequences use it; only unpinned adapters are evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlotAssignment:
    """Result of :meth:`AdapterSlots.try_acquire`: the slot, and whether the caller must load weights into it."""

    slot: int
    needs_load: bool
    evicted: str | None = None  #: adapter that lost the slot, if any


class AdapterSlots:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._pins: dict[str, int] = {}

    def slot_of(self, name: str) -> int | None:
        return self._slot_of.get(name)

    @property
    def resident(self) -> list[str]:
        return list(self._slot_of)

    def try_acquire(self, name: str) -> SlotAssignment | None:
        """Pin ``name`` into a slot, evicting the least recently used unpinned adapter if needed.

        Returns ``None`` when every slot is pinned by adapters in use.
        """
        if name in self._slot_of:
            self._slot_of.move_to_end(name)
            self._pins[name] = self._pins.get(name, 0) + 1
            return SlotAssignment(self._slot_of[name], needs_load=False)
        evicted = None
        if len(self._slot_of) < self.num_slots:
            used = set(self._slot_of.values())
            slot = next(s for s in range(self.num_slots) if s not in used)
        else:
            evicted = next((n for n in self._slot_of if not self._pins.get(n)), None)
            if evicted is None:
                return None
            slot = self._slot_of.pop(evicted)
            self._pins.pop(evicted, None)
        self._slot_of[name] = slot
        self._pins[name] = 1
        return SlotAssignment(slot, needs_load=True, evicted=evicted)

    def release(self, name: str) -> None:
        """Drop one pin of ``name`` (it stays resident until evicted)."""
        if self._pins.get(name):
            self._pins[name] -= 1

    def evict(self, name: str) -> int | None:
        """Remove ``name`` from its slot (unload). Returns the freed slot; refuses (``None``) while pinned."""
        if self._pins.get(name) or name not in self._slot_of:
            return None
        self._pins.pop(name, None)
        return self._slot_of.pop(name)
