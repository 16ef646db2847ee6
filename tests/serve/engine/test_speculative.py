"""Prompt-lookup speculative decoding: the n-gram proposer, draft verification (greedy and rejection
sampling), the scheduler's draft accounting, and on the real model: greedy output identical on and off."""

from __future__ import annotations

import pytest
import torch

from serve.engine.block_manager import BlockManager
from serve.engine.sampler import filtered_probs, verify_drafts
from serve.engine.sampling_params import SamplingParams
from serve.engine.scheduler import Scheduler
from serve.engine.sequence import Sequence
from serve.engine.speculative import SpecStats, propose_ngram

pytestmark = pytest.mark.timeout(300)


# -- proposer ----------------------------------------------------------------------------------------------
def test_proposes_what_followed_the_latest_match() -> None:
    ids = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert propose_ngram(ids, 2, max_ngram=3, min_ngram=2) == [7, 8]  # latest "1 2 3", not the first
    assert propose_ngram(ids, 10, max_ngram=3, min_ngram=2) == [7, 8, 1, 2, 3]  # stops at the context's end


def test_longer_ngrams_win() -> None:
    ids = [5, 6, 40, 9, 9, 6, 41, 5, 6]
    assert propose_ngram(ids, 1, max_ngram=2, min_ngram=1) == [40]  # "5 6" matches at 0, "6" alone later
    assert propose_ngram(ids, 1, max_ngram=1, min_ngram=1) == [41]


def test_no_match_or_nothing_to_propose() -> None:
    assert propose_ngram([1, 2, 3, 4], 4) == []
    assert propose_ngram([1, 2, 1, 2], 0) == []
    assert propose_ngram([7, 7], 3, min_ngram=2) == []  # too short to hold a match and a continuation


def test_spec_stats() -> None:
    s = SpecStats()
    s.record(4, 3)
    s.record(0, 0)  # a step without drafts is not a draft
    s.record(2, 0)
    assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == (2, 6, 3) and s.acceptance_rate == 0.5


# -- verification ------------------------------------------------------------------------------------------
def one_hot_logits(winners: list[int], vocab: int = 8) -> torch.Tensor:
    logits = torch.zeros(len(winners), vocab)
    logits[torch.arange(len(winners)), torch.tensor(winners)] = 5.0
    return logits


def test_greedy_keeps_the_agreeing_prefix_then_corrects() -> None:
    logits = one_hot_logits([3, 4, 6, 1])  # the model's argmax after each prefix
    assert verify_drafts(logits, [3, 4, 5], 0.0, -1, 1.0) == [3, 4, 6]
    assert verify_drafts(logits, [3, 4, 6], 0.0, -1, 1.0) == [3, 4, 6, 1]  # all accepted, plus a bonus token
    assert verify_drafts(logits, [0, 4, 6], 0.0, -1, 1.0) == [3]


def test_rejection_sampling_keeps_the_target_distribution() -> None:
    """The first token out of verify_drafts must be distributed as p, whatever the (deterministic) draft."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    temperature, trials = 0.8, 4000
    p = filtered_probs(logits[:1], torch.tensor([temperature]), [-1], [1.0])[0]
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(trials):
        counts[verify_drafts(logits, [1], temperature, -1, 1.0, gen)[0]] += 1
    freq = counts / trials
    assert torch.allclose(freq, p, atol=0.025), (freq, p)


def test_rejection_respects_top_k() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(1)
    firsts = {verify_drafts(logits, [3], 1.0, 2, 1.0, gen)[0] for _ in range(300)}
    assert firsts == {0, 1}, "a draft outside the top-k is always rejected, and corrections stay inside it"


# -- scheduler ---------------------------------------------------------------------------------------------
def test_drafts_are_scheduled_within_budget_and_committed_as_accepted() -> None:
    sched = Scheduler(BlockManager(32, 4), max_num_seqs=4, max_num_batched_tokens=8)
    s = Sequence("s", list(range(10, 16)), SamplingParams(max_tokens=20, temperature=0.0))
    sched.add(s)
    sched.commit(sched.schedule())
    s.token_ids.append(1)
    s.draft_token_ids = [2, 3, 4, 5, 6, 7, 8, 9, 10]
    out = sched.schedule()
    (item,) = out.scheduled
    assert (item.num_new_tokens, item.num_draft_tokens, out.num_tokens) == (1, 7, 8)  # budget 8 = 1 + 7 drafts
    assert len(s.block_table) * 4 >= 6 + 1 + 7, "slots for every draft"
    sched.commit(out, {"s": 3})
    assert s.num_computed_tokens == 6 + 1 + 3  # the last token and 3 accepted drafts keep their KV


# -- the real model ----------------------------------------------------------------------------------------
INPUT_GROUNDED = (
    "Copy this sentence exactly: The museum opens at ten, closes at six, and is free on the first Sunday of every month.",
    "Repeat after me: red, orange, yellow, green, blue, indigo, violet. Red, orange, yellow, green, blue,",
)


def run(engine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    return engine.generate(prompts, params)

@pytest.mark.slow  # full tier: ~7 s; test_openai_features checks greedy output with speculation on through the server

def test_greedy_output_is_identical_with_speculation(engine, tokenizer) -> None:
    from lorafleet.chat import chat_token_ids

    prompts = [chat_token_ids(tokenizer, [{"role": "user", "content": text}]) for text in INPUT_GROUNDED]
    prompts.append(tokenizer(INPUT_GROUNDED[1]).input_ids)
    off = run(engine, prompts, SamplingParams(max_tokens=40, temperature=0.0, num_speculative_tokens=0))
    before = engine.stats().spec_decode
    on = run(engine, prompts, SamplingParams(max_tokens=40, temperature=0.0, num_speculative_tokens=6))
    after = engine.stats().spec_decode
    assert on == off
    assert after.num_draft_tokens > before.num_draft_tokens
    assert after.num_accepted_tokens - before.num_accepted_tokens >= 8, "input-grounded prompts accept drafts"


def test_speculation_never_passes_max_tokens(engine, tokenizer) -> None:
    prompt = tokenizer(INPUT_GROUNDED[1]).input_ids
    for max_tokens in (1, 2, 5, 9):
        out = run(engine, [prompt], SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                                   num_speculative_tokens=8))
        assert len(out[0]) == max_tokens


def test_sampling_with_speculation_is_seeded(engine, tokenizer) -> None:
    prompt = tokenizer(INPUT_GROUNDED[1]).input_ids
    params = SamplingParams(max_tokens=24, temperature=0.7, seed=11, num_speculative_tokens=4)
    assert run(engine, [prompt], params) == run(engine, [prompt], params)
