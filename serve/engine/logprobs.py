"""Log-probabilities of generated tokens, in the engine's terms (token ids and floats; the server renders
OpenAI's shapes).

Which values: *raw* log-probabilities, ``log_softmax`` of the model's fp32 logits before temperature,
top-k/top-p and the structured-output grammar mask. This is vLLM's default ``logprobs_mode="raw_logprobs"``
(vLLM applies the grammar bitmask before it, we do not: a constrained token keeps the probability the model
gave it). So a greedy token's logprob equals HF transformers' ``log_softmax(logits)[token]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float  #: natural log, <= 0
    rank: int  #: 1 + number of tokens the model rated strictly more likely (1: the argmax)
    top: tuple[tuple[int, float], ...] = ()  #: (token id, logprob) of the k most likely tokens, descending


def token_logprobs(logits: torch.Tensor, token_ids: list[int], num_top: list[int]) -> list[TokenLogprob]:
    """Raw logprobs of ``token_ids[i]`` under ``logits[i]`` ([n, vocab], fp32) with the ``num_top[i]`` most
    likely tokens of each row. Returns n entries."""
    if not token_ids:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(token_ids, device=lp.device)
    chosen = lp.gather(1, ids[:, None])  # [n, 1]
    ranks = ((lp > chosen).sum(dim=-1) + 1).tolist()
    k = max(num_top)
    top_vals = top_ids = None
    if k > 0:
        top = lp.topk(k, dim=-1)  # sorted descending
        top_vals, top_ids = top.values.tolist(), top.indices.tolist()
    out = []
    for i, (tid, value) in enumerate(zip(token_ids, chosen[:, 0].tolist())):
        pairs = tuple(zip(top_ids[i][:num_top[i]], top_vals[i][:num_top[i]])) if num_top[i] else ()
        out.append(TokenLogprob(tid, value, ranks[i], pairs))
    return out


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """Raw logprobs of consecutive prompt tokens computed in one prefill chunk."""

    first_position: int  #: prompt position of ``entries[0]``'s token (>= 1: the first token has no logprob)
    entries: tuple[TokenLogprob, ...]
