"""Token sampling from fp32 logits: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """Per-row sampling settings for one step (row i samples from ``logits[i]``)."""

    temperatures: tuple[float, ...]  #: 0 means greedy
    top_ps: tuple[float, ...]
    top_ks: tuple[int, ...]  #: <= 0 means no top-k
    generators: tuple[torch.Generator | None, ...]  #: per-row RNG (seeded requests) or None for the shared one

    @property
    def all_greedy(self) -> bool:
        return all(t == 0.0 for t in self.temperatures)


def sample(logits: torch.Tensor, batch: SamplingBatch, default_generator: torch.Generator | None = None) -> list[int]:
    """Pick one token per row of ``logits`` [n, vocab] (fp32). Returns n token ids."""
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
    )
    for j, i in enumerate(rows):
        gen = batch.generators[i] or default_generator
        out[i] = int(torch.multinomial(probs[j], 1, generator=gen))
    return out


def filtered_probs(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p filtering. ``logits`` [n, vocab] → [n, vocab]."""
    logits = logits / temperatures[:, None]
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
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)
