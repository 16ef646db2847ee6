"""Iteration-level scheduler: decides which sequences run in the next step and how many tokens each computes.

Policy (one step):
1. Running sequences first, in arrival order: a decode takes one token of the budget, an unfinished prefill
   takes the next chunk. When KV blocks run out, the most recently arrived running sequence is preempted
   (its blocks are freed and it is recomputed later), so memory pressure never crashes the engine.
2. Waiting sequences are admitted while the token budget, ``max_num_seqs`` and free blocks allow, starting
   from their prefix-cache hit. Long prompts get the budget left after the decodes, in chunks.

A decode that carries speculated draft tokens (``seq.draft_token_ids``, proposed by the engine) computes
them in the same step when the budget and free blocks allow; otherwise it runs as a plain decode. Choices of
an ``n > 1`` request start from their first choice's computed prompt (:meth:`Scheduler.fork`).

No torch here: the scheduler talks to :class:`BlockManager` only through its public calls.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from serve.engine.block_manager import BlockCopy, BlockManager, PrefixMatch
from serve.engine.sequence import Sequence, SeqStatus


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    """One sequence in a step: compute ``token_ids[start:start + num_new_tokens]``, then the first
    ``num_draft_tokens`` of ``seq.draft_token_ids`` (speculated, to be verified)."""

    seq: Sequence
    start: int  #: first position computed this step (== num_computed_tokens before the step)
    num_new_tokens: int
    num_draft_tokens: int = 0

    @property
    def num_query_tokens(self) -> int:
        """Tokens the forward pass computes for this sequence: its new tokens plus the drafts."""
        return self.num_new_tokens + self.num_draft_tokens

    @property
    def is_decode(self) -> bool:
        return self.num_new_tokens == 1 and self.start > 0

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token, so its logits are sampled."""
        return self.start + self.num_new_tokens == self.seq.num_tokens


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """What the model runner computes in one step. Decodes come first, then prefill chunks."""

    scheduled: tuple[ScheduledSeq, ...]
    preempted_ids: tuple[str, ...] = ()
    block_copies: tuple[BlockCopy, ...] = ()  #: copy-on-write block copies to make before the forward pass

    @property
    def num_tokens(self) -> int:
        return sum(s.num_query_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_usage: float  #: share of KV blocks in use, [0, 1]
    prefix_query_tokens: int
    prefix_hit_tokens: int
    num_preemptions: int
    num_computed_prompt_tokens: int = 0  #: prompt tokens run through the model (prefill work, all requests)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_computed_prompt_tokens = 0

    # -- queue management ----------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq_id: str) -> Sequence | None:
        """Remove a sequence wherever it is, freeing its blocks. Returns it, or ``None`` if unknown."""
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.seq_id == seq_id:
                    queue.remove(seq)
                    self.bm.free(seq)
                    seq.status = SeqStatus.FINISHED_ABORTED
                    return seq
        return None

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_usage=self.bm.usage,
            prefix_query_tokens=self.bm.stats.num_query_tokens,
            prefix_hit_tokens=self.bm.stats.num_hit_tokens,
            num_preemptions=self.num_preemptions,
            num_computed_prompt_tokens=self.num_computed_prompt_tokens,
        )

    # -- the decision ----------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        decodes: list[ScheduledSeq] = []
        prefills: list[ScheduledSeq] = []
        preempted: list[str] = []

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            d = min(len(seq.draft_token_ids), budget - n) if n == seq.num_uncomputed_tokens else 0
            if d and self.bm.allocate_slots(seq, n + d):
                decodes.append(ScheduledSeq(seq, seq.num_computed_tokens, n, d))
                budget -= n + d
                i += 1
                continue
            while not self.bm.allocate_slots(seq, n):
                victim = self.running.pop()  # latest arrival loses its blocks first
                self._preempt(victim)
                preempted.append(victim.seq_id)
                if victim is seq:
                    break
            else:
                item = ScheduledSeq(seq, seq.num_computed_tokens, n)
                (decodes if item.is_decode else prefills).append(item)
                budget -= n
                i += 1

        if not preempted:
            budget = self._admit(budget, prefills)
        return SchedulerOutput(tuple(decodes + prefills), tuple(preempted), self.bm.take_block_copies())

    def _admit(self, budget: int, prefills: list[ScheduledSeq]) -> int:
        now = time.monotonic()
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self.running and len(self.running) + 1 + len(seq.forks) > self.max_num_seqs:
                break  # its choices join the batch when its prompt is done: wait for room for all of them
            # Prompt logprobs need every prompt row's logits, so those requests recompute cached blocks.
            prefix = self.bm.match_prefix(seq) if seq.params.prompt_logprobs is None else PrefixMatch()
            n = min(seq.num_tokens - prefix.num_tokens, budget)
            if not self.bm.allocate_slots(seq, n, prefix):
                break
            self.waiting.popleft()
            if seq.num_preemptions == 0 and seq.times.first_scheduled is None:
                seq.num_cached_tokens = prefix.num_tokens
                self.bm.record_prefix_query(seq.num_tokens, prefix.num_tokens)
                seq.times.first_scheduled = now
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            prefills.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        return budget

    def _preempt(self, seq: Sequence) -> None:
        self.bm.free(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # -- after the step --------------------------------------------------------------------------------
    def commit(self, out: SchedulerOutput, num_accepted: dict[str, int] | None = None) -> None:
        """Advance computed-token counts of the step's sequences and publish their newly full blocks.
        ``num_accepted`` gives, by sequence id, how many of its verified draft tokens were accepted (their
        K/V stay valid; the rejected ones' slots are simply overwritten later)."""
        for item in out.scheduled:
            seq = item.seq
            accepted = min(num_accepted.get(seq.seq_id, 0), item.num_draft_tokens) if num_accepted else 0
            self.num_computed_prompt_tokens += max(0, min(item.start + item.num_new_tokens, seq.num_prompt_tokens)
                                                   - item.start)
            seq.num_computed_tokens = item.start + item.num_new_tokens + accepted
            self.bm.cache_full_blocks(seq)

    def fork(self, parent: Sequence, children: list[Sequence]) -> None:
        """Start ``children`` (further choices of ``parent``'s request, never scheduled themselves) on
        ``parent``'s computed prompt: they share its blocks and run from the next step on."""
        for child in children:
            self.bm.fork(parent, child)
            child.status = SeqStatus.RUNNING
            child.num_cached_tokens = parent.num_cached_tokens
            child.times.first_scheduled = parent.times.first_scheduled
            self.running.append(child)

    def finish(self, seq: Sequence, status: SeqStatus) -> None:
        """Mark ``seq`` finished with ``status`` and release its blocks."""
        seq.status = status
        if seq in self.running:
            self.running.remove(seq)
        self.bm.free(seq)
