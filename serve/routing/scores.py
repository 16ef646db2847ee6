"""Pure helpers of the routing policies: stable hashing, block-aligned prefix keys, rendezvous (consistent)
hashing and the load bound of consistent hashing with bounded loads. No I/O, no state, no randomness.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from serve.routing.types import ReplicaStats

_U64 = 2**64


def stable_hash64(*parts: str | bytes | int) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` of str is salted per process)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, int):
            p = p.to_bytes(8, "little", signed=False) if 0 <= p < _U64 else str(p).encode()
        elif isinstance(p, str):
            p = p.encode("utf-8", "surrogatepass")
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return int.from_bytes(h.digest(), "little")


def text_prefix_keys(text: str, block_chars: int, max_blocks: int, salt: str = "") -> tuple[int, ...]:
    """Chained keys of the full ``block_chars``-character blocks at the start of ``text``.

    Key ``i`` hashes key ``i-1`` with block ``i``, so equal keys mean equal prefixes up to that block, as in
    the engines' block-hash prefix caches. Only full blocks count (engines cache only full KV blocks); at most
    ``max_blocks`` are kept. ``salt`` separates caches that cannot share blocks (another model or adapter).
    """
    if block_chars < 1 or max_blocks < 0:
        raise ValueError(f"block_chars must be >= 1 and max_blocks >= 0, got {block_chars}, {max_blocks}")
    num_blocks = min(len(text) // block_chars, max_blocks)
    if num_blocks == 0:
        return ()
    keys: list[int] = []
    parent = stable_hash64("prefix", salt)
    for i in range(num_blocks):
        parent = stable_hash64(parent, text[i * block_chars:(i + 1) * block_chars])
        keys.append(parent)
    return tuple(keys)


def token_prefix_keys(token_ids: Sequence[int], block_size: int, max_blocks: int, salt: str = "") -> tuple[int, ...]:
    """Like :func:`text_prefix_keys` over token ids in blocks of ``block_size`` tokens (the engine's own unit)."""
    if block_size < 1 or max_blocks < 0:
        raise ValueError(f"block_size must be >= 1 and max_blocks >= 0, got {block_size}, {max_blocks}")
    num_blocks = min(len(token_ids) // block_size, max_blocks)
    keys: list[int] = []
    parent = stable_hash64("prefix", salt)
    for i in range(num_blocks):
        # Masked to 32 bits: the same bytes as a signed encoding for every real token id, and no OverflowError
        # for absurd ones in a client's prompt (the engine refuses those; routing must not crash first).
        block = b"".join((int(t) & 0xFFFFFFFF).to_bytes(4, "little")
                         for t in token_ids[i * block_size:(i + 1) * block_size])
        parent = stable_hash64(parent, block)
        keys.append(parent)
    return tuple(keys)


def rendezvous_order(key: int, replicas: Sequence[ReplicaStats]) -> tuple[int, ...]:
    """Indexes of ``replicas`` from the most to the least preferred home of ``key`` (weighted rendezvous hashing).

    Each replica scores ``-weight / ln(u)`` with ``u`` in (0, 1) a hash of (key, replica name); the order is
    stable under adding or removing other replicas, so only ~1/n of the keys move when the fleet changes, and
    a replica's share of keys is proportional to its weight.
    """
    def score(r: ReplicaStats) -> float:
        u = (stable_hash64(key, r.name) + 0.5) / _U64
        return -r.weight / math.log(u)

    scores = [score(r) for r in replicas]
    return tuple(sorted(range(len(replicas)), key=lambda i: (-scores[i], replicas[i].name)))


def placement_order(key: int, replicas: Sequence[ReplicaStats], balance: bool = True) -> tuple[int, ...]:
    """Indexes of ``replicas`` from the most to the least preferred home of a new prefix with placement key ``key``.

    With ``balance``, the fewest remembered prefix blocks per unit of weight first (the emptiest cache, as
    SGLang's cache-aware router picks the smallest radix tree), ties in rendezvous order; else rendezvous
    order alone. Hashing alone balances prefixes only on average: 8 tenants over 2 replicas land 7 to 1 often
    enough, and the replica with 7 then thrashes its cache while the other idles.
    """
    order = rendezvous_order(key, replicas)
    if not balance:
        return order
    rank = {i: r for r, i in enumerate(order)}
    return tuple(sorted(order, key=lambda i: (replicas[i].num_prefix_blocks / replicas[i].weight, rank[i])))


def load_bound(replicas: Sequence[ReplicaStats], index: int, factor: float, min_bound: int = 0) -> int:
    """Most requests replica ``index`` may hold after taking one more, under bounded-load balancing.

    ``max(min_bound, ceil(factor * (total + 1) * w_i / sum(w)))``: the replica's weighted share of all
    outstanding work (including the new request) times ``factor`` >= 1 (Mirrokni, Thorup & Zadimoghaddam,
    "Consistent Hashing with Bounded Loads", 2018). Some replica is always within its bound, because not all
    can be above their share at once. ``min_bound`` keeps a nearly idle fleet from spilling a request away
    from its cache because one replica holds a single request more than another.
    """
    if factor < 1:
        raise ValueError(f"load factor must be >= 1, got {factor}")
    total = sum(r.load for r in replicas)
    weight_sum = sum(r.weight for r in replicas)
    return max(min_bound, math.ceil(factor * (total + 1) * replicas[index].weight / weight_sum))


def within_bound(replicas: Sequence[ReplicaStats], factor: float, min_bound: int = 0) -> tuple[bool, ...]:
    """Per replica: may it take one more request without exceeding :func:`load_bound`?"""
    return tuple(r.load + 1 <= load_bound(replicas, i, factor, min_bound) for i, r in enumerate(replicas))


def relative_load(r: ReplicaStats) -> float:
    """Load per unit of weight: what 'least loaded' minimises."""
    return r.load / r.weight


def rotation(i: int, num_replicas: int, request_index: int) -> int:
    """Tie-break rank of index ``i`` that shifts by one every request, so equal replicas take turns."""
    return (i - request_index) % num_replicas


def hash_key(prefix_keys: Sequence[int], hash_blocks: int) -> int | None:
    """The prefix key that places a new prefix: the ``hash_blocks``-th block's key, or None if the prompt is
    shorter than that. Hashing a deeper block than the first keeps prompts that share only a short common
    header (a chat template's system tag) from all landing on the same replica."""
    if hash_blocks < 1:
        raise ValueError(f"hash_blocks must be >= 1, got {hash_blocks}")
    return prefix_keys[hash_blocks - 1] if len(prefix_keys) >= hash_blocks else None


PLACEMENTS = ("least_cached", "hash")  #: where a prefix seen nowhere goes (see :func:`placement_order`)


def check_settings(load_factor: float, min_bound: int, hash_blocks: int = 1, placement: str = PLACEMENTS[0]) -> None:
    """The settings the bounded-load policies share; ValueError names the first bad one."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got '{placement}'")
    if load_factor < 1:
        raise ValueError(f"load_factor must be >= 1, got {load_factor}")
    if hash_blocks < 1:
        raise ValueError(f"hash_blocks must be >= 1, got {hash_blocks}")
    if min_bound < 0:
        raise ValueError(f"min_bound must be >= 0, got {min_bound}")
