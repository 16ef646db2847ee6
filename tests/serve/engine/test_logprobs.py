"""Raw logprobs: token_logprobs on known logits, and the engine's greedy-token logprobs against HF
transformers' log-softmax (fp32, within 1e-3), with sorted, consistent top alternatives."""

from __future__ import annotations

import pytest
import torch

from serve.engine.logprobs import token_logprobs
from serve.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)
TOLERANCE = 1e-3
NUM_TOKENS = 12


def test_token_logprobs_on_known_logits() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]])
    out = token_logprobs(logits, [1, 2], [2, 0])
    ref = torch.log_softmax(logits, -1)
    assert out[0].token_id == 1 and out[0].logprob == pytest.approx(float(ref[0, 1])) and out[0].rank == 2
    assert [t for t, _ in out[0].top] == [0, 1] and out[0].top[0][1] == pytest.approx(float(ref[0, 0]))
    assert out[1].rank == 1 and out[1].top == ()


def collect(engine, prompt: list[int], params: SamplingParams) -> tuple[list[int], list]:
    engine.add_request("lp", prompt, params)
    ids, logprobs = [], []
    while engine.has_unfinished:
        for out in engine.step():
            ids.extend(out.token_ids)
            logprobs.extend(out.logprobs or ())
    return ids, logprobs


@pytest.mark.parametrize("which", [1, 3, 8, 13])  # plain and chat prompts of several lengths
def test_greedy_logprobs_match_hf_log_softmax(engine, hf_model, prompt_set, which) -> None:
    prompt = list(prompt_set[which].token_ids)
    ids, entries = collect(engine, prompt, SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True,
                                                          logprobs=5))
    assert [e.token_id for e in entries] == ids and len(ids) == NUM_TOKENS
    with torch.inference_mode():
        hf = torch.log_softmax(hf_model(torch.tensor([prompt + ids[:-1]])).logits[0, len(prompt) - 1:].float(), -1)
    for i, e in enumerate(entries):
        assert abs(e.logprob - float(hf[i, e.token_id])) < TOLERANCE, f"token {i}"
        values = [v for _, v in e.top]
        assert values == sorted(values, reverse=True) and len(values) == 5
        assert e.top[0] == (e.token_id, e.logprob) and e.rank == 1, "greedy picks the top token"
        for tid, v in e.top:
            assert abs(v - float(hf[i, tid])) < TOLERANCE


def test_sampled_tokens_report_their_own_rank(engine, prompt_set) -> None:
    prompt = list(prompt_set[2].token_ids)
    ids, entries = collect(engine, prompt, SamplingParams(max_tokens=16, temperature=1.5, seed=3, ignore_eos=True,
                                                          logprobs=3))
    assert len(entries) == len(ids) == 16
    for e in entries:
        in_top = [v for t, v in e.top if t == e.token_id]
        assert (e.rank <= 3) == bool(in_top), "the chosen token is in the top-k exactly when its rank is"
        if in_top:
            assert in_top[0] == e.logprob
        else:
            assert e.logprob <= e.top[-1][1]


def test_logprobs_equal_with_and_without_speculation(engine, tokenizer) -> None:
    prompt = tokenizer("one two three four five six one two three four five six one two three").input_ids
    params = dict(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=2)
    ids_off, off = collect(engine, prompt, SamplingParams(**params, num_speculative_tokens=0))
    ids_on, on = collect(engine, prompt, SamplingParams(**params, num_speculative_tokens=5))
    assert ids_on == ids_off
    assert [e.token_id for e in on] == [e.token_id for e in off]
    assert all(abs(a.logprob - b.logprob) < TOLERANCE for a, b in zip(on, off))
