"""The gateway's record of which replica was sent which prompt prefix: the input to longest-prefix matching.

It is mutable state owned by one gateway (kept on ``app.state``, never module-level); policies only see its
answers, as ``ReplicaStats.num_cached_prefix_blocks``. It approximates the engines' caches: an engine may have
evicted a block the index still lists, and the index forgets least recently used keys beyond its capacity.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence


class PrefixIndex:
    """Maps a prefix-block key (see ``scores.text_prefix_keys``) to the replicas that were sent it.

    The replicas holding a key are a bit mask (one bit per replica name, assigned on first sight) rather than a
    set: at up to hundreds of thousands of keys, a set per key made the gateway's memory grow by ~440 bytes a key
    for hours under varied prompts (issue #10's soak); a small int costs nothing beyond the dict entry.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._replicas_by_key: OrderedDict[int, int] = OrderedDict()  # key -> mask of replica bits
        self._bits: dict[str, int] = {}  # replica -> its bit
        self._num_keys: Counter[str] = Counter()  # per replica: keys that list it

    def __len__(self) -> int:
        return len(self._replicas_by_key)

    def _bit(self, replica: str) -> int:
        bit = self._bits.get(replica)
        if bit is None:
            bit = self._bits[replica] = 1 << len(self._bits)
        return bit

    def record(self, prefix_keys: Sequence[int], replica: str) -> None:
        """Note that a request with these prefix keys was sent to ``replica``."""
        bit = self._bit(replica)
        for key in prefix_keys:
            holders = self._replicas_by_key.get(key, 0)
            if not holders & bit:
                self._num_keys[replica] += 1
            self._replicas_by_key[key] = holders | bit
            self._replicas_by_key.move_to_end(key)
        while len(self._replicas_by_key) > self.max_keys:
            _, holders = self._replicas_by_key.popitem(last=False)
            for name, b in self._bits.items():
                if holders & b:
                    self._num_keys[name] -= 1

    def num_blocks(self, replica: str) -> int:
        """Prefix blocks the index remembers sending to ``replica`` (an estimate of its cache's contents)."""
        return self._num_keys[replica]

    def num_cached_blocks(self, prefix_keys: Sequence[int], replica: str) -> int:
        """Length of the longest leading run of ``prefix_keys`` that ``replica`` was sent.

        Keys are chained (key i covers blocks 0..i), so the deepest key held is the match length.
        """
        bit = self._bits.get(replica)
        if bit is None:
            return 0
        for depth in range(len(prefix_keys), 0, -1):
            if self._replicas_by_key.get(prefix_keys[depth - 1], 0) & bit:
                return depth
        return 0

    def forget_replica(self, replica: str) -> None:
        """Drop ``replica`` everywhere (it was removed, or restarted with an empty cache)."""
        bit = self._bits.get(replica)
        if bit is not None:
            for key in [k for k, holders in self._replicas_by_key.items() if holders & bit]:
                holders = self._replicas_by_key[key] & ~bit
                if holders:
                    self._replicas_by_key[key] = holders
                else:
                    del self._replicas_by_key[key]
        self._num_keys.pop(replica, None)
