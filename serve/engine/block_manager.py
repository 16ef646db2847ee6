"""KV-cache block accounting with automatic prefix caching (no torch here).

Blocks are ids into the model runner's preallocated KV pool. A block that holds ``block_size`` computed
tokens is *full* and gets a content hash chained from its parent's hash, its token ids and the adapter key,
so requests with the same prefix (and the same adapter) share it. Blocks are ref-counted; a block whose count
drops to zero keeps its hash and stays reusable until it is evicted, least recently freed first.

Choices of one request (``n > 1``) share the prompt's blocks through :meth:`BlockManager.fork`. The first
time a sequence writes into a block that another sequence also holds (the prompt's partial last block), that
block is copied to a private one (copy-on-write); the runner performs the copies a step asks for before its
forward pass (:meth:`BlockManager.take_block_copies`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from serve.engine.sequence import Sequence


@dataclass(slots=True, eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockCopy:
    """Copy-on-write: the KV of block ``src`` must be copied into block ``dst`` before the next forward pass."""

    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """Result of a prefix-cache lookup: full blocks that already hold the request's first tokens."""

    block_ids: tuple[int, ...] = ()
    num_tokens: int = 0


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters in tokens, as vLLM reports them (``prefix_cache_queries`` / ``prefix_cache_hits``)."""

    num_query_tokens: int = 0
    num_hit_tokens: int = 0


def block_hash(parent_hash: int | None, token_ids: tuple[int, ...], adapter_key: int) -> int:
    """Content hash of a full block: depends on everything before it (through the parent) and the adapter."""
    return hash((parent_hash, token_ids, adapter_key))


class BlockManager:
    """Allocates and frees KV blocks for sequences and keeps the prefix cache.

    Public calls: :meth:`match_prefix` (pure lookup), :meth:`allocate_slots` (returns ``False`` without side
    effects when memory is short), :meth:`fork`, :meth:`take_block_copies`, :meth:`cache_full_blocks`,
    :meth:`free`.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, least recently freed first. Cached ones stay in _cached until evicted.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._copies: list[BlockCopy] = []  # copy-on-write copies not yet taken by the scheduler
        self.stats = PrefixCacheStats()

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free, including evictable cached blocks)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Share of blocks held by live sequences, in [0, 1]."""
        return 1.0 - len(self._free) / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> PrefixMatch:
        """Find cached full blocks covering the start of ``seq``'s tokens. Never covers the last token,
        which must be computed to produce logits."""
        if not self.enable_prefix_caching:
            return PrefixMatch()
        ids: list[int] = []
        parent: int | None = None
        max_blocks = (seq.num_tokens - 1) // self.block_size
        for i in range(max_blocks):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = block_hash(parent, tokens, seq.adapter_key)
            bid = self._cached.get(h)
            if bid is None or self._blocks[bid].token_ids != tokens:
                break
            ids.append(bid)
            parent = h
        return PrefixMatch(tuple(ids), len(ids) * self.block_size)

    # -- mutations ---------------------------------------------------------------------------------------
    def allocate_slots(self, seq: Sequence, num_new_tokens: int, prefix: PrefixMatch | None = None) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``seq`` (after taking ``prefix`` blocks, if given).

        If the first block written is shared with another sequence (after :meth:`fork`), it is replaced by a
        private copy, recorded for :meth:`take_block_copies`. Returns ``False`` and changes nothing when there
        are not enough free blocks.
        """
        prefix = prefix or PrefixMatch()
        if prefix.block_ids and seq.block_table:
            raise ValueError("a prefix can only be attached to a sequence without blocks")
        num_computed = seq.num_computed_tokens + prefix.num_tokens
        num_needed = self.num_blocks_for(num_computed + num_new_tokens) - len(seq.block_table) - len(prefix.block_ids)
        cow_index = num_computed // self.block_size
        needs_copy = (num_new_tokens > 0 and cow_index < len(seq.block_table)
                      and self._blocks[seq.block_table[cow_index]].ref_count > 1)
        # Taking a cached block that sits in the free queue also removes it from the free pool.
        num_prefix_from_free = sum(1 for b in prefix.block_ids if self._blocks[b].ref_count == 0)
        if max(num_needed, 0) + needs_copy + num_prefix_from_free > len(self._free):
            return False
        for bid in prefix.block_ids:
            self._take(bid)
        seq.block_table.extend(prefix.block_ids)
        if prefix.block_ids:
            seq.num_computed_tokens = num_computed
        if needs_copy:
            shared = seq.block_table[cow_index]
            self._blocks[shared].ref_count -= 1  # still >= 1: the other holders keep it
            seq.block_table[cow_index] = self._take_free()
            self._copies.append(BlockCopy(shared, seq.block_table[cow_index]))
        for _ in range(max(num_needed, 0)):
            seq.block_table.append(self._take_free())
        return True

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Give ``child`` (which holds no blocks) ``parent``'s blocks and computed tokens, shared by ref-count."""
        if child.block_table:
            raise ValueError("only a sequence without blocks can be forked into")
        for bid in parent.block_table:
            self._blocks[bid].ref_count += 1
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens

    def take_block_copies(self) -> tuple[BlockCopy, ...]:
        """The copy-on-write copies made since the last call (the scheduler hands them to the runner)."""
        copies, self._copies = tuple(self._copies), []
        return copies

    def record_prefix_query(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        """Count a prefix-cache lookup for a newly admitted prompt (tokens)."""
        self.stats.num_query_tokens += num_query_tokens
        self.stats.num_hit_tokens += num_hit_tokens

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of ``seq``'s blocks that became full of computed tokens (accepted draft tokens
        count once they are appended to ``seq.token_ids``)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        parent: int | None = None
        for i in range(num_full):
            block = self._blocks[seq.block_table[i]]
            if block.block_hash is not None:
                parent = block.block_hash
                continue
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = block_hash(parent, tokens, seq.adapter_key)
            block.block_hash, block.token_ids = h, tokens
            # First writer wins; an identical block computed concurrently stays private and is freed normally.
            self._cached.setdefault(h, block.block_id)
            parent = h

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks. Tail blocks are queued first so they are evicted before shared heads."""
        for bid in reversed(seq.block_table):
            block = self._blocks[bid]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"double free of block {bid}"
            if block.ref_count == 0:
                self._free[bid] = None
        seq.block_table.clear()
        seq.num_computed_tokens = 0

    # -- internals ---------------------------------------------------------------------------------------
    def _take(self, bid: int) -> None:
        block = self._blocks[bid]
        if block.ref_count == 0:
            del self._free[bid]
        block.ref_count += 1

    def _take_free(self) -> int:
        bid, _ = self._free.popitem(last=False)
        block = self._blocks[bid]
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) == bid:
                del self._cached[block.block_hash]
            block.block_hash, block.token_ids = None, ()
        block.ref_count = 1
        return bid
