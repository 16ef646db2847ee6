"""serve/engine/penalties.py: each adjustment against HF transformers' logits processor where one exists
(repetition penalty, min-p, bad words, sequence bias) and against the closed form otherwise (presence and
frequency penalties), on random fp32 logits; plus the batched sampler path end to end."""

from __future__ import annotations

import pytest
import torch
from transformers import (MinPLogitsWarper, NoBadWordsLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                          SequenceBiasLogitsProcessor)

from serve.engine.penalties import (LogitsAdjust, PenaltyBatch, apply_adjust, apply_penalties, banned_by_bad_words,
                                    min_p_mask, token_counts)
from serve.engine.sampler import SamplingBatch, filtered_probs, sample

VOCAB = 64


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(0)) * 4


PROMPTS = [[1, 2, 3, 3], [5], [7, 8]]
OUTPUTS = [[3, 9, 9, 9], [], [8, 2, 2]]


def test_token_counts_counts_each_occurrence() -> None:
    counts = token_counts(OUTPUTS, VOCAB)
    assert counts.shape == (3, VOCAB)
    assert counts[0, 9] == 3 and counts[0, 3] == 1 and counts[1].sum() == 0 and counts[2, 2] == 2
    assert counts.sum() == sum(len(o) for o in OUTPUTS)


def test_repetition_penalty_equals_hf(logits: torch.Tensor) -> None:
    """HF's processor sees prompt + output as ``input_ids``, as vLLM's repetition penalty does."""
    for r in (0.7, 1.3, 2.0):
        ours = apply_penalties(logits, token_counts(PROMPTS, VOCAB) > 0, token_counts(OUTPUTS, VOCAB),
                               torch.zeros(3), torch.zeros(3), torch.full((3,), r))
        for i in range(3):
            ids = torch.tensor([PROMPTS[i] + OUTPUTS[i]])
            ref = RepetitionPenaltyLogitsProcessor(r)(ids, logits[i:i + 1].clone())
            torch.testing.assert_close(ours[i:i + 1], ref, rtol=0, atol=0)


def test_presence_and_frequency_closed_form(logits: torch.Tensor) -> None:
    """OpenAI's formula on output counts only: logit - f * count - p * (count > 0); prompt tokens untouched."""
    p, f = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 0.25, -2.0])
    ours = apply_penalties(logits, token_counts(PROMPTS, VOCAB) > 0, token_counts(OUTPUTS, VOCAB), p, f, torch.ones(3))
    expected = logits.clone()
    for i, out in enumerate(OUTPUTS):
        for t in set(out):
            expected[i, t] -= f[i] * out.count(t) + p[i]
    torch.testing.assert_close(ours, expected)
    assert ours[0, 1] == logits[0, 1], "a prompt-only token is not penalized by presence/frequency"


def test_min_p_equals_hf(logits: torch.Tensor) -> None:
    for m in (0.05, 0.3, 1.0):
        drop = min_p_mask(logits, torch.full((3,), m))
        ref = MinPLogitsWarper(m)(None, logits.clone())
        assert torch.equal(drop, ref == float("-inf"))
    assert not min_p_mask(logits, torch.zeros(3)).any(), "min_p 0 keeps every token"


def test_min_p_one_sampling_is_greedy(logits: torch.Tensor) -> None:
    b = SamplingBatch((1.0,) * 3, (1.0,) * 3, (-1,) * 3, (None,) * 3, min_ps=(1.0,) * 3)
    for seed in range(5):
        assert sample(logits.clone(), b, torch.Generator().manual_seed(seed)) == logits.argmax(-1).tolist()
    probs = filtered_probs(logits, torch.ones(3), [-1] * 3, [1.0] * 3, [0.2, 0.0, 0.5])
    closed = torch.softmax(logits, -1)
    keep = closed >= torch.tensor([0.2, 0.0, 0.5])[:, None] * closed.max(-1, keepdim=True).values
    assert torch.equal(probs > 0, keep)


def test_bad_words_equal_hf_on_the_output() -> None:
    """vLLM matches a bad word's prefix against the output; HF against ``input_ids`` (the same when the
    prefix does not reach back into the prompt, as here)."""
    words = ((4,), (9, 5), (2, 2, 6), (3, 9, 9, 7))
    for out in ([3, 9], [9, 9], [8, 2, 2], [3, 9, 9], []):
        ours = sorted(banned_by_bad_words(out, words))
        scores = torch.zeros(1, VOCAB)
        ref = NoBadWordsLogitsProcessor([list(w) for w in words], eos_token_id=0)(torch.tensor([[60] + out]), scores)
        assert ours == sorted((ref[0] == float("-inf")).nonzero()[:, 0].tolist()), out


def test_logit_bias_equals_hf_sequence_bias(logits: torch.Tensor) -> None:
    bias = {5: 3.5, 17: -100.0, 40: 0.25}
    adjust = LogitsAdjust(torch.tensor([1, 1, 1]), torch.tensor(list(bias)), torch.tensor(list(bias.values())))
    ours = apply_adjust(logits, adjust)
    ref = SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()})(torch.tensor([[1]]), logits[1:2].clone())
    torch.testing.assert_close(ours[1:2], ref)
    assert torch.equal(ours[[0, 2]], logits[[0, 2]]), "other rows are untouched"


def test_bias_comes_before_the_repetition_penalty_as_in_hf(logits: torch.Tensor) -> None:
    """HF's generate applies SequenceBias before RepetitionPenalty, vLLM its logit bias before penalties."""
    ids = torch.tensor([PROMPTS[0] + OUTPUTS[0]])
    pen = PenaltyBatch(torch.tensor([0]), torch.zeros(1), torch.zeros(1), torch.tensor([1.7]),
                       token_counts([OUTPUTS[0]], VOCAB), token_counts([PROMPTS[0]], VOCAB) > 0)
    adjust = LogitsAdjust(torch.tensor([0, 0]), torch.tensor([3, 9]), torch.tensor([2.5, -4.0]), pen)
    ref = SequenceBiasLogitsProcessor({(3,): 2.5, (9,): -4.0})(ids, logits[:1].clone())
    ref = RepetitionPenaltyLogitsProcessor(1.7)(ids, ref)
    torch.testing.assert_close(apply_adjust(logits, adjust)[:1], ref)


def test_batched_adjust_only_touches_its_rows(logits: torch.Tensor) -> None:
    pen = PenaltyBatch(torch.tensor([2]), torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([1.5]),
                       token_counts([OUTPUTS[2]], VOCAB), token_counts([PROMPTS[2]], VOCAB) > 0)
    banned = LogitsAdjust(torch.tensor([0]), torch.tensor([7]), torch.tensor([float("-inf")]), pen)
    out = apply_adjust(logits, banned)
    assert out[0, 7] == float("-inf") and torch.equal(out[1], logits[1])
    expected = apply_penalties(logits[2:], token_counts([PROMPTS[2]], VOCAB) > 0, token_counts([OUTPUTS[2]], VOCAB),
                               torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([1.5]))
    torch.testing.assert_close(out[2:], expected)
    b = SamplingBatch((0.0,) * 3, (1.0,) * 3, (-1,) * 3, (None,) * 3, adjust=banned)
    assert sample(logits.clone(), b) == out.argmax(-1).tolist()


def test_extreme_repetition_penalties_keep_the_row_finite() -> None:
    """r = 1e-40 (found by fuzzing: it overflowed to +inf and made the softmax NaN, a 500) and r = 1e40."""
    logits = torch.tensor([[3.0, -2.0, 0.5, 1.0]])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.zeros(1, 4)
    zero = torch.zeros(1)
    tiny = apply_penalties(logits, seen, counts, zero, zero, torch.tensor([1e-40]))
    assert not tiny.isnan().any() and tiny[0, 0] == torch.finfo(torch.float32).max and abs(tiny[0, 1]) < 1e-30
    assert torch.softmax(tiny, -1).argmax() == 0 and not torch.softmax(tiny, -1).isnan().any()
    huge = apply_penalties(logits, seen, counts, zero, zero, torch.tensor([1e40]))
    assert huge[0, 1] == float("-inf") and huge[0, 0] < 1e-30 and torch.softmax(huge, -1).argmax() == 3
