"""serve/engine/sampler.py: greedy, top-k, top-p, temperature and per-request seeds on fp32 logits."""

from __future__ import annotations

import math

import pytest
import torch

from serve.engine.sampler import SamplingBatch, filtered_probs, sample

VOCAB = 1000


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0)) * 3


def batch(n: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, seeds=None) -> SamplingBatch:
    gens = tuple(torch.Generator().manual_seed(s) if s is not None else None for s in (seeds or [None] * n))
    return SamplingBatch((temperature,) * n, (top_p,) * n, (top_k,) * n, gens)


def test_greedy_is_argmax(logits: torch.Tensor) -> None:
    assert sample(logits, batch(6, temperature=0.0)) == logits.argmax(-1).tolist()


def test_top_k_1_equals_greedy(logits: torch.Tensor) -> None:
    for seed in range(5):
        got = sample(logits, batch(6, temperature=1.5, top_k=1), torch.Generator().manual_seed(seed))
        assert got == logits.argmax(-1).tolist()


def test_tiny_top_p_equals_greedy(logits: torch.Tensor) -> None:
    for seed in range(5):
        got = sample(logits, batch(6, temperature=2.0, top_p=1e-6), torch.Generator().manual_seed(seed))
        assert got == logits.argmax(-1).tolist()


def test_same_seed_same_samples() -> None:
    flat = torch.zeros(6, VOCAB)  # uniform: any difference in RNG use shows
    b1, b2 = batch(6, seeds=[11] * 6), batch(6, seeds=[11] * 6)
    draws1 = [sample(flat, b1) for _ in range(10)]
    draws2 = [sample(flat, b2) for _ in range(10)]
    assert draws1 == draws2, "equal seeds must give equal sample sequences"
    assert len({tuple(d) for d in draws1}) > 1, "a seeded generator must advance between steps"
    other = [sample(flat, batch(6, seeds=[12] * 6)) for _ in range(10)]
    assert other != draws1


def test_unseeded_rows_use_the_default_generator() -> None:
    flat = torch.zeros(4, VOCAB)
    a = sample(flat, batch(4), torch.Generator().manual_seed(5))
    b = sample(flat, batch(4), torch.Generator().manual_seed(5))
    assert a == b


def test_greedy_rows_are_unaffected_by_sampled_rows(logits: torch.Tensor) -> None:
    mixed = SamplingBatch((0.0, 1.0, 0.0, 1.0, 0.0, 1.0), (1.0,) * 6, (-1,) * 6, (None,) * 6)
    got = sample(logits, mixed, torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1).tolist()
    assert [got[i] for i in (0, 2, 4)] == [greedy[i] for i in (0, 2, 4)]
    assert all(0 <= t < VOCAB for t in got)


def test_filtered_probs_sum_to_one(logits: torch.Tensor) -> None:
    temps = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.7, 1.3])
    probs = filtered_probs(logits, temps, [-1, 5, 0, 50, VOCAB, 2000], [1.0, 0.9, 0.5, 1.0, 0.1, 0.99])
    assert probs.shape == logits.shape
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert (probs >= 0).all()


def test_temperature_scales_logits(logits: torch.Tensor) -> None:
    probs = filtered_probs(logits, torch.full((6,), 2.0), [-1] * 6, [1.0] * 6)
    torch.testing.assert_close(probs, torch.softmax(logits / 2.0, dim=-1))


def test_top_k_keeps_exactly_the_k_largest(logits: torch.Tensor) -> None:
    probs = filtered_probs(logits, torch.ones(6), [3, 1, 10, -1, 0, VOCAB], [1.0] * 6)
    for row, k in enumerate([3, 1, 10, VOCAB, VOCAB, VOCAB]):
        kept = set(torch.nonzero(probs[row]).flatten().tolist())
        assert kept == set(torch.topk(logits[row], k).indices.tolist())
    # Kept tokens keep their relative odds.
    top3 = torch.topk(logits[0], 3).indices
    torch.testing.assert_close(probs[0, top3], torch.softmax(logits[0, top3], dim=-1))


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = torch.log(p)[None].repeat(3, 1)
    probs = filtered_probs(logits, torch.ones(3), [-1] * 3, [0.35, 0.65, 0.95])
    torch.testing.assert_close(probs[0], torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(probs[1], torch.tensor([4 / 7, 3 / 7, 0, 0]))
    torch.testing.assert_close(probs[2], torch.tensor([0.4, 0.3, 0.2, 0.1]))


def test_top_p_applies_after_shuffled_order() -> None:
    p = torch.tensor([0.1, 0.4, 0.2, 0.3])  # the filter must follow probability order, not index order
    probs = filtered_probs(torch.log(p)[None], torch.ones(1), [-1], [0.65])
    torch.testing.assert_close(probs[0], torch.tensor([0, 4 / 7, 0, 3 / 7]))


def test_samples_follow_the_distribution() -> None:
    p = torch.tensor([0.5, 0.3, 0.2])
    n = 3000
    logits = torch.log(p)[None].repeat(n, 1)
    got = torch.tensor(sample(logits, batch(n, seeds=None), torch.Generator().manual_seed(0)))
    freq = torch.bincount(got, minlength=3).float() / n
    # 5 standard errors of a binomial proportion: a wrong sampler fails, a correct one essentially never does.
    for i in range(3):
        assert abs(freq[i] - p[i]) < 5 * math.sqrt(p[i] * (1 - p[i]) / n)


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 5e-324), (5e-324, 1.0), (1e-300, 0.5), (2.0, 1e-46)])
def test_values_that_underflow_in_float32_sample_greedily(logits: torch.Tensor, temperature: float, top_p: float) -> None:
    """Found by fuzzing the server (issue #10): top_p 5e-324 or temperature 5e-324 is 0 in float32 and made
    every probability NaN (an HTTP 500); both mean greedy."""
    got = sample(logits, batch(6, temperature=temperature, top_p=top_p), torch.Generator().manual_seed(0))
    assert got == logits.argmax(-1).tolist()
