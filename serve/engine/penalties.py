"""Logits adjustments before sampling, as pure tensor functions: presence, frequency and repetition penalties,
``logit_bias``, banned tokens (``bad_words``, ``min_tokens``) and the ``min_p`` filter.

Semantics are vLLM's (``vllm/model_executor/layers/utils.py::apply_penalties`` and its v1 sampler):

* repetition penalty ``r`` (HF's ``RepetitionPenaltyLogitsProcessor``): every token that occurs in the prompt
  *or* the output so far has its logit divided by ``r`` when positive, multiplied by ``r`` otherwise;
* frequency penalty ``f`` and presence penalty ``p`` (OpenAI's formula) count the *output* tokens only:
  ``logit[t] -= f * count[t] + p * (count[t] > 0)``;
* ``min_p`` (HF's ``MinPLogitsWarper``): after temperature, drop every token whose probability is below
  ``min_p`` times the most likely token's.

Every function works on a whole batch at once ([rows, vocab] tensors); the per-row settings are tensors too,
so the step path has no per-row Python loop over the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch


@dataclass(frozen=True, slots=True)
class PenaltyBatch:
    """Penalty settings and token statistics of the rows of a step that use any penalty."""

    rows: torch.Tensor  #: long [m]: the rows of the step's logits these settings belong to
    presence: torch.Tensor  #: fp32 [m]
    frequency: torch.Tensor  #: fp32 [m]
    repetition: torch.Tensor  #: fp32 [m] (1: off)
    output_counts: torch.Tensor  #: fp32 [m, vocab]: occurrences of each token in the row's output so far
    prompt_mask: torch.Tensor  #: bool [m, vocab]: the token occurs in the row's prompt


@dataclass(frozen=True, slots=True)
class LogitsAdjust:
    """Everything applied to a step's logits before the greedy pick and the sampling filters."""

    #: sparse additions (row, token id, value): ``logit_bias`` entries and -inf for banned tokens
    bias_rows: torch.Tensor | None = None  #: long [k]
    bias_token_ids: torch.Tensor | None = None  #: long [k]
    bias_values: torch.Tensor | None = None  #: fp32 [k]
    penalties: PenaltyBatch | None = None
    allowed_rows: torch.Tensor | None = None  #: long [a]: rows restricted to ``allowed_mask``
    allowed_mask: torch.Tensor | None = None  #: bool [a, vocab]: the tokens those rows may pick


def token_counts(token_ids: list[list[int]], vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 [len(token_ids), vocab_size]: how often each token occurs in each row's list (one scatter-add)."""
    lengths = torch.tensor([len(t) for t in token_ids], device=device)
    flat = torch.tensor(list(chain.from_iterable(token_ids)), dtype=torch.long, device=device)
    rows = torch.repeat_interleave(torch.arange(len(token_ids), device=device), lengths)
    counts = torch.zeros(len(token_ids), vocab_size, device=device)
    return counts.index_put_((rows, flat), torch.ones_like(flat, dtype=counts.dtype), accumulate=True)


def apply_penalties(logits: torch.Tensor, prompt_mask: torch.Tensor, output_counts: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Penalized copy of ``logits`` [m, vocab] (fp32); the settings are [m] tensors, see the module docstring."""
    seen = prompt_mask | (output_counts > 0)
    rep = repetition[:, None]
    # A tiny penalty (any r > 0 is allowed, as in vLLM) divides a positive logit past the dtype's range; +inf
    # would make the row's softmax NaN, so it is capped at the largest finite value (still a certain pick).
    # A huge one sends negative logits to -inf, which only rules those tokens out.
    scaled = torch.where(logits > 0, (logits / rep).clamp(max=torch.finfo(logits.dtype).max), logits * rep)
    logits = torch.where(seen, scaled, logits)
    return logits - frequency[:, None] * output_counts - presence[:, None] * (output_counts > 0).to(logits.dtype)


def min_p_mask(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """bool [m, vocab]: tokens the ``min_p`` filter drops (probability < min_p × the row's top probability).
    ``logits`` are already divided by the temperature; ``min_p`` is [m] (0: keep all)."""
    probs = torch.softmax(logits, dim=-1)
    return probs < min_p[:, None] * probs.amax(dim=-1, keepdim=True)


def banned_by_bad_words(output_ids: list[int], bad_words_token_ids: tuple[tuple[int, ...], ...]) -> list[int]:
    """Token ids banned next: the last token of each bad word whose preceding tokens end the output so far
    (vLLM matches against the output only; a one-token bad word is always banned)."""
    banned = []
    for word in bad_words_token_ids:
        prefix = word[:-1]
        if not prefix or (len(output_ids) >= len(prefix) and tuple(output_ids[len(output_ids) - len(prefix):]) == prefix):
            banned.append(word[-1])
    return banned


def tokenize_bad_words(tokenizer, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """vLLM's ``bad_words`` tokenization: each word as written (left-stripped) and, when that gives a different
    first token of the same length, with a leading space, so the word is banned at the start of the text and
    after a space."""
    out: list[tuple[int, ...]] = []
    for word in words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        out.append(plain)
        if spaced[0] != plain[0] and len(spaced) == len(plain):
            out.append(spaced)
    return tuple(out)


def apply_adjust(logits: torch.Tensor, adjust: LogitsAdjust) -> torch.Tensor:
    """``logits`` [n, vocab] with ``adjust`` applied (a new tensor; the input is left as it was). The order is
    vLLM's v1 sampler's (and HF's, for sequence bias before the repetition penalty): allowed ids, then biases
    and bans, then penalties."""
    out = logits.clone()
    if adjust.allowed_rows is not None:
        out[adjust.allowed_rows] = out[adjust.allowed_rows].masked_fill(~adjust.allowed_mask, float("-inf"))
    if adjust.bias_rows is not None and adjust.bias_rows.numel():
        out.index_put_((adjust.bias_rows, adjust.bias_token_ids), adjust.bias_values, accumulate=True)
    p = adjust.penalties
    if p is not None:
        out[p.rows] = apply_penalties(out[p.rows], p.prompt_mask, p.output_counts, p.presence, p.frequency, p.repetition)
    return out
