"""The gateway's record of which replica was sent which prompt prefix: the input to longest-prefix matching.

It is mutable state owned by one gateway (kept on ``app.state``, never module-level); policies only see its
answers, as ``ReplicaStats.num_cached_prefix_blocks``. It approximates the engines' caches: an engine may have
evicted a block the index still lists, and the index forgets least recently used keys beyond its capacity.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence


class PrefixIndex:
    """Maps a prefix-block key (see ``scores.text_prefix_keys``) to the replicas that were sent it."""

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._replicas_by_key: OrderedDict[int, set[str]] = OrderedDict()
        self._num_keys: Counter[str] = Counter()  # per replica: keys that list it

    def __len__(self) -> int:
        return len(self._replicas_by_key)

    def record(self, prefix_keys: Sequence[int], replica: str) -> None:
        """Note that a request with these prefix keys was sent to ``replica``."""
        for key in prefix_keys:
            holders = self._replicas_by_key.get(key)
            if holders is None:
                self._replicas_by_key[key] = {replica}
                self._num_keys[replica] += 1
            else:
                if replica not in holders:
                    holders.add(replica)
                    self._num_keys[replica] += 1
                self._replicas_by_key.move_to_end(key)
        while len(self._replicas_by_key) > self.max_keys:
            _, holders = self._replicas_by_key.popitem(last=False)
            for r in holders:
                self._num_keys[r] -= 1

    def num_blocks(self, replica: str) -> int:
        """Prefix blocks the index remembers sending to ``replica`` (an estimate of its cache's contents)."""
        return self._num_keys[replica]

    def num_cached_blocks(self, prefix_keys: Sequence[int], replica: str) -> int:
        """Length of the longest leading run of ``prefix_keys`` that ``replica`` was sent.

        Keys are chained (key i covers blocks 0..i), so the deepest key held is the match length.
        """
        for depth in range(len(prefix_keys), 0, -1):
            holders = self._replicas_by_key.get(prefix_keys[depth - 1])
            if holders is not None and replica in holders:
                return depth
        return 0

    def forget_replica(self, replica: str) -> None:
        """Drop ``replica`` everywhere (it was removed, or restarted with an empty cache)."""
        empty = []
        for key, holders in self._replicas_by_key.items():
            holders.discard(replica)
            if not holders:
                empty.append(key)
        for key in empty:
            del self._replicas_by_key[key]
        self._num_keys.pop(replica, None)
