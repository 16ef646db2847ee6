"""One step's token picking, between the runner's logits and the engine: which logits row each sequence
samples from, grammar masks, draft verification, forks of ``n > 1`` requests, seeds and logprobs.

Rows of ``logits`` follow the scheduled items that sample, in order: one row per item (its last token), or
``1 + d`` rows for an item verifying ``d`` draft tokens. Choices waiting in ``seq.forks`` sample their first
token from their parent's row, each with its own generator and grammar state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from serve.engine.logprobs import PromptLogprobs, TokenLogprob, token_logprobs
from serve.engine.penalties import LogitsAdjust, PenaltyBatch, banned_by_bad_words, token_counts
from serve.engine.sampler import SamplingBatch, sample, verify_drafts
from serve.engine.scheduler import ScheduledSeq
from serve.engine.sequence import Sequence
from serve.engine.structured import allocate_bitmask


@dataclass(frozen=True, slots=True)
class RunnerOutput:
    """Tokens picked in one step, by sequence id: only sequences whose step reached their last token, plus
    the choices forked from them. One token each, or the accepted drafts plus one when drafts were verified.
    Prefill chunks that do not sample may still carry prompt logprobs."""

    sampled: dict[str, list[int]]
    #: raw logprobs of every token in ``sampled``, for sequences that asked (``params.logprobs`` set)
    logprobs: dict[str, list[TokenLogprob]] = field(default_factory=dict)
    #: prompt-token logprobs computed this step, by sequence id (``params.prompt_logprobs`` set)
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)


class StepSampler:
    """Holds the per-sequence generators of seeded requests and the shared one of the rest."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self._generators: dict[str, torch.Generator] = {}
        self._default_generator = torch.Generator(device=device).manual_seed(seed)

    def release(self, seq_id: str) -> None:
        """Forget a finished sequence's generator."""
        self._generators.pop(seq_id, None)

    def _generator(self, seq: Sequence) -> torch.Generator | None:
        p = seq.params
        if p.seed is None or p.is_greedy:
            return None
        g = self._generators.get(seq.seq_id)
        if g is None:  # choice i of a request samples with seed + i, as vLLM does
            g = self._generators[seq.seq_id] = torch.Generator(device=self.device).manual_seed(p.seed + seq.index)
        return g

    def sample(self, logits: torch.Tensor, items: list[ScheduledSeq]) -> RunnerOutput:
        """``logits`` fp32 [rows, vocab] laid out as the module docstring says → tokens (and logprobs)."""
        plain: list[tuple[Sequence, int]] = []  # (sequence, logits row) picking one token
        verify: list[tuple[Sequence, int, int]] = []  # (sequence, first row, number of drafts)
        row = 0
        for it in items:
            d = it.num_draft_tokens
            if d:
                verify.append((it.seq, row, d))
            else:
                plain.append((it.seq, row))
                plain.extend((child, row) for child in it.seq.forks)
            row += 1 + d
        sampled: dict[str, list[int]] = {}
        if plain:
            sampled.update(self._sample_plain(logits, plain))
        for seq, first, d in verify:
            p = seq.params
            sampled[seq.seq_id] = verify_drafts(logits[first:first + d + 1], seq.draft_token_ids[:d], p.temperature,
                                                p.top_k, p.top_p, self._generator(seq) or self._default_generator)
        rows = {seq.seq_id: r for seq, r in plain} | {seq.seq_id: r for seq, r, _ in verify}
        wanting = [seq for seq, _ in plain] + [seq for seq, _, _ in verify]
        return RunnerOutput(sampled, self._logprobs(logits, wanting, rows, sampled))

    def _sample_plain(self, logits: torch.Tensor, plain: list[tuple[Sequence, int]]) -> dict[str, list[int]]:
        rows = [r for _, r in plain]
        masked = tuple(i for i, (seq, _) in enumerate(plain) if seq.guide is not None)
        if rows == list(range(logits.shape[0])):
            x = logits.clone() if masked else logits  # masking is in place; logprobs need the raw logits
        else:
            x = logits[torch.tensor(rows, device=logits.device)]
        bitmask = None
        if masked:
            bitmask = allocate_bitmask(len(plain), logits.shape[-1])
            for i in masked:
                plain[i][0].guide.fill_bitmask(bitmask, i)
        seqs = [seq for seq, _ in plain]
        batch = SamplingBatch(
            temperatures=tuple(s.params.temperature for s in seqs),
            top_ps=tuple(s.params.top_p for s in seqs),
            top_ks=tuple(s.params.top_k for s in seqs),
            generators=tuple(self._generator(s) for s in seqs),
            bitmask=bitmask,
            masked_rows=masked,
            min_ps=tuple(s.params.min_p for s in seqs),
            adjust=logits_adjust(seqs, logits.shape[-1], logits.device),
        )
        tokens = sample(x, batch, self._default_generator)
        return {seq.seq_id: [t] for seq, t in zip(seqs, tokens)}

    @staticmethod
    def _logprobs(logits: torch.Tensor, seqs: list[Sequence], rows: dict[str, int],
                  sampled: dict[str, list[int]]) -> dict[str, list[TokenLogprob]]:
        wanting = [s for s in seqs if s.params.logprobs is not None]
        if not wanting:
            return {}
        row_ids, token_ids, tops, owners = [], [], [], []
        for s in wanting:
            for j, token in enumerate(sampled[s.seq_id]):  # token j of a verified item comes from row first + j
                row_ids.append(rows[s.seq_id] + j)
                token_ids.append(token)
                tops.append(s.params.logprobs)
                owners.append(s.seq_id)
        values = token_logprobs(logits[torch.tensor(row_ids, device=logits.device)], token_ids, tops)
        out: dict[str, list[TokenLogprob]] = {}
        for owner, value in zip(owners, values):
            out.setdefault(owner, []).append(value)
        return out


def logits_adjust(seqs: list[Sequence], vocab_size: int, device: torch.device) -> LogitsAdjust | None:
    """The penalties, biases and bans of a step whose row i samples for ``seqs[i]`` (None if there are none).
    Python walks only the rows that use these features, to gather token ids; the math is batched."""
    active = [(i, s) for i, s in enumerate(seqs) if s.params.has_logits_adjust]
    if not active:  # the usual step: one pass over the rows, nothing built
        return None
    rows, token_ids, values = [], [], []
    for i, s in active:
        banned = banned_by_bad_words(s.output_token_ids, s.bad_words_token_ids) if s.bad_words_token_ids else []
        if s.num_output_tokens < s.params.min_tokens:
            banned += s.min_tokens_stop_ids
        pairs = [*s.params.logit_bias, *((t, float("-inf")) for t in banned)]
        rows += [i] * len(pairs)
        token_ids += [t for t, _ in pairs]
        values += [v for _, v in pairs]
    penalized = [i for i, s in active if s.params.is_penalized]
    restricted = [i for i, s in active if s.params.allowed_token_ids]
    if not rows and not penalized and not restricted:
        return None
    allowed_rows = allowed_mask = None
    if restricted:
        allowed_rows = torch.tensor(restricted, device=device)
        allowed_mask = token_counts([list(seqs[i].params.allowed_token_ids) for i in restricted], vocab_size, device) > 0
    penalties = None
    if penalized:
        chosen = [seqs[i] for i in penalized]
        penalties = PenaltyBatch(
            rows=torch.tensor(penalized, device=device),
            presence=torch.tensor([s.params.presence_penalty for s in chosen], device=device),
            frequency=torch.tensor([s.params.frequency_penalty for s in chosen], device=device),
            repetition=torch.tensor([s.params.repetition_penalty for s in chosen], device=device),
            output_counts=token_counts([s.output_token_ids for s in chosen], vocab_size, device),
            prompt_mask=token_counts([s.prompt_token_ids for s in chosen], vocab_size, device) > 0,
        )
    return LogitsAdjust(torch.tensor(rows, dtype=torch.long, device=device),
                        torch.tensor(token_ids, dtype=torch.long, device=device),
                        torch.tensor(values, dtype=torch.float32, device=device), penalties, allowed_rows, allowed_mask)
