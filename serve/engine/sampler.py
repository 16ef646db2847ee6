"""Token sampling from fp32 logits: greedy, temperature, top-k, top-p, min-p, per-request seeds, per-row grammar
bitmasks (structured outputs), penalties and logit biases (:mod:`serve.engine.penalties`), and verification
of speculated draft tokens.

Order, as in vLLM's v1 sampler: grammar mask → bias, bans and penalties → greedy pick → temperature → min-p
→ top-k → top-p → draw."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serve.engine.penalties import LogitsAdjust, apply_adjust, min_p_mask
from serve.engine.structured import apply_bitmask


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """Per-row sampling settings for one step (row i samples from ``logits[i]``)."""

    temperatures: tuple[float, ...]  #: 0 means greedy
    top_ps: tuple[float, ...]
    top_ks: tuple[int, ...]  #: <= 0 means no top-k
    generators: tuple[torch.Generator | None, ...]  #: per-row RNG (seeded requests) or None for the shared one
    #: int32 [n, ceil(vocab / 32)] packed allowed-token bits for the rows in ``masked_rows`` (constrained rows)
    bitmask: torch.Tensor | None = None
    masked_rows: tuple[int, ...] = ()
    min_ps: tuple[float, ...] = ()  #: per-row min-p (empty: all 0)
    adjust: LogitsAdjust | None = None  #: penalties, biases and bans (None: none)

    @property
    def all_greedy(self) -> bool:
        return all(t == 0.0 for t in self.temperatures)


MIN_TEMPERATURE = 1e-4  #: smaller positive temperatures are raised to this (logits / t must stay finite)


def sample(logits: torch.Tensor, batch: SamplingBatch, default_generator: torch.Generator | None = None) -> list[int]:
    """Pick one token per row of ``logits`` [n, vocab] (fp32). Returns n token ids. Rows in
    ``batch.masked_rows`` only pick tokens their bitmask allows (``logits`` is changed in place there)."""
    if batch.masked_rows:
        apply_bitmask(logits, batch.bitmask, list(batch.masked_rows))
    if batch.adjust is not None:
        logits = apply_adjust(logits, batch.adjust)
    greedy = logits.argmax(dim=-1)
    if batch.all_greedy:
        return greedy.tolist()
    out = greedy.tolist()
    rows = [i for i, t in enumerate(batch.temperatures) if t > 0.0]
    idx = torch.tensor(rows, device=logits.device)
    probs = filtered_probs(
        logits[idx],
        torch.tensor([batch.temperatures[i] for i in rows], device=logits.device),
        [batch.top_ks[i] for i in rows],
        [batch.top_ps[i] for i in rows],
        [batch.min_ps[i] for i in rows] if batch.min_ps else None,
    )
    for j, i in enumerate(rows):
        gen = batch.generators[i] or default_generator
        out[i] = int(torch.multinomial(probs[j], 1, generator=gen))
    return out


def filtered_probs(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: list[int], top_ps: list[float],
                   min_ps: list[float] | None = None) -> torch.Tensor:
    """Probabilities after temperature, min-p, top-k and top-p filtering. ``logits`` [n, vocab] → [n, vocab]."""
    # A temperature that is positive as a Python float can be 0 in float32 (5e-324) or overflow the division:
    # below MIN_TEMPERATURE the result is greedy anyway.
    logits = logits / temperatures.clamp(min=MIN_TEMPERATURE)[:, None]
    if min_ps is not None and any(m > 0.0 for m in min_ps):
        drop = min_p_mask(logits, torch.tensor(min_ps, device=logits.device, dtype=logits.dtype))
        logits = logits.masked_fill(drop, float("-inf"))
    vocab = logits.shape[-1]
    if any(0 < k < vocab for k in top_ks):
        ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], device=logits.device)
        kth = torch.sort(logits, dim=-1, descending=True).values.gather(1, (ks - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(p < 1.0 for p in top_ps):
        ps = torch.tensor(top_ps, device=logits.device, dtype=logits.dtype)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches p; the top token always stays.
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= ps[:, None]
        drop_sorted[:, 0] = False  # (a top_p that is 0 in float32, e.g. 5e-324, would drop it too)
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def verify_drafts(logits: torch.Tensor, draft_ids: list[int], temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None = None) -> list[int]:
    """Check speculated tokens against the target model and return the tokens to append: the accepted
    drafts plus one token from the target (a correction at the first rejection, else a bonus token).

    ``logits`` [d + 1, vocab]: row i is the model's prediction after the context plus ``draft_ids[:i]``.
    Greedy: a draft is accepted while it equals the argmax, so the output equals plain greedy decoding.
    Sampling: standard speculative rejection sampling with a deterministic proposer (q = one-hot at the
    draft): accept draft x with probability p(x); on rejection sample from p with x removed, renormalized
    (that is norm(max(0, p - q))). The result is distributed exactly as sampling from p token by token.
    """
    if temperature == 0.0:
        target = logits.argmax(dim=-1).tolist()
        out = []
        for i, draft in enumerate(draft_ids):
            out.append(target[i])
            if target[i] != draft:
                return out
        out.append(target[-1])
        return out
    rows = logits.shape[0]
    probs = filtered_probs(logits, torch.full((rows,), temperature, device=logits.device), [top_k] * rows, [top_p] * rows)
    coins = torch.rand(len(draft_ids), generator=generator, device=logits.device).tolist()
    out = []
    for i, draft in enumerate(draft_ids):
        if coins[i] < float(probs[i, draft]):
            out.append(draft)
            continue
        residual = probs[i].clone()
        residual[draft] = 0.0  # p(x) < 1 here, so some mass remains
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(probs[-1], 1, generator=generator)))
    return out
