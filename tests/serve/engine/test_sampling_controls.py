"""Sampling controls on the real engine (fp32 greedy) against HF transformers ``generate`` on the same
checkpoint: repetition penalty, bad words, logit bias and min_tokens through HF's own logits processors;
presence and frequency penalties through a closed-form processor written here; min_p 1 equals greedy."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from serve.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)

NUM_TOKENS = 24
PROMPTS = (1, 4, 11, 13)  # indices into prompt_set: plain prose, a counting list, a repeated sentence, a chat turn


class OpenAIPenalties(LogitsProcessor):
    """Closed form of OpenAI's presence/frequency penalties over the generated tokens only."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = input_ids[0, self.prompt_len:]
        counts = torch.zeros_like(scores[0]).index_add_(0, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class OnlyTokens(LogitsProcessor):
    """Closed form of vLLM's allowed_token_ids: every other token's logit is -inf."""

    def __init__(self, allowed: set[int]) -> None:
        self.allowed = torch.tensor(sorted(allowed))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[:, self.allowed] = True
        return scores.masked_fill(~keep, float("-inf"))


@pytest.fixture(scope="module")
def hf_generate(hf_model):
    def run(prompt: tuple[int, ...], max_new_tokens: int = NUM_TOKENS, **kw) -> list[int]:
        ids = torch.tensor([list(prompt)])
        with torch.inference_mode():
            out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=hf_model.generation_config.pad_token_id, **kw)
        return out[0, ids.shape[1]:].tolist()

    return run


def greedy(**kw) -> SamplingParams:
    return SamplingParams(**{"max_tokens": NUM_TOKENS, "temperature": 0.0, "ignore_eos": True, **kw})


def assert_starts_with_hf(ours: list[int], ref: list[int], eos_ids) -> None:
    """Ours runs past EOS (ignore_eos); HF stops there."""
    assert len(ref) == NUM_TOKENS or ref[-1] in eos_ids
    assert ours[:len(ref)] == ref


@pytest.mark.slow  # HF generate with a processor per prompt and penalty: about 30 s (the unit tests of
# serve/engine/penalties.py check the same math against HF's processor in the fast tier)
def test_repetition_penalty_matches_hf(engine, prompt_set, hf_generate, hf_greedy, eos_token_ids) -> None:
    prompts = [prompt_set[i].token_ids for i in PROMPTS[:3]]
    for r, chosen in ((1.3, prompts), (0.8, prompts[1:2])):  # a penalty < 1 rewards repeats
        outs = engine.generate([list(p) for p in chosen], greedy(repetition_penalty=r))
        for p, ours in zip(chosen, outs):
            assert_starts_with_hf(ours, hf_generate(p, repetition_penalty=r), eos_token_ids)
        assert outs != [hf_greedy(p, NUM_TOKENS) for p in chosen], f"the penalty {r} must change some output"


@pytest.mark.slow  # about 10 s; the closed form is also checked on random logits in test_penalties.py
def test_presence_and_frequency_match_closed_form(engine, prompt_set, hf_generate, eos_token_ids) -> None:
    for i, (presence, frequency) in zip(PROMPTS[:3], ((1.5, 0.0), (0.0, 1.0), (-0.5, 0.7))):
        p = prompt_set[i].token_ids
        (ours,) = engine.generate([list(p)], greedy(presence_penalty=presence, frequency_penalty=frequency))
        ref = hf_generate(p, logits_processor=LogitsProcessorList([OpenAIPenalties(len(p), presence, frequency)]))
        assert_starts_with_hf(ours, ref, eos_token_ids)


def test_bad_words_and_logit_bias_match_hf(engine, prompt_set, hf_greedy, hf_generate, eos_token_ids) -> None:
    p = prompt_set[PROMPTS[0]].token_ids
    free = hf_greedy(p, NUM_TOKENS)
    bad = ((free[2],), (free[5], free[6]))  # one token, and a pair whose prefix is in the output
    assert free[5] != p[-1], "the pair's prefix must not be the prompt's last token (HF also matches the prompt)"
    (ours,) = engine.generate([list(p)], greedy(bad_words_token_ids=bad))
    assert_starts_with_hf(ours, hf_generate(p, bad_words_ids=[list(w) for w in bad]), eos_token_ids)
    assert ours != free
    bias = ((free[0], -100.0), (free[3], -5.0), (1000, 8.0))
    (ours,) = engine.generate([list(p)], greedy(logit_bias=bias))
    assert_starts_with_hf(ours, hf_generate(p, sequence_bias={(t,): b for t, b in bias}), eos_token_ids)
    assert ours[0] != free[0]


def test_allowed_token_ids_match_closed_form(engine, prompt_set, hf_greedy, hf_generate, eos_token_ids) -> None:
    p = prompt_set[PROMPTS[0]].token_ids
    free = hf_greedy(p, NUM_TOKENS)
    allowed = (set(free[:10]) | set(range(100, 140))) - {free[1]}
    (ours,) = engine.generate([list(p)], greedy(allowed_token_ids=tuple(sorted(allowed))))
    assert set(ours) <= allowed and ours != free
    assert_starts_with_hf(ours, hf_generate(p, logits_processor=LogitsProcessorList([OnlyTokens(allowed)])),
                          eos_token_ids)


def test_bad_words_strings_are_never_generated(engine, tokenizer, prompt_set, hf_greedy) -> None:
    p = prompt_set[PROMPTS[0]].token_ids
    free_text = tokenizer.decode(hf_greedy(p, NUM_TOKENS))
    word = free_text.split()[1]
    (ours,) = engine.generate([list(p)], greedy(bad_words=(word,)))
    assert word not in tokenizer.decode(ours).split()


def test_min_tokens_masks_eos_like_hf(engine, prompt_set, hf_generate, hf_greedy, eos_token_ids) -> None:
    chat = prompt_set[13].token_ids  # "What is the capital of France?": HF stops well before 24 tokens
    free = hf_greedy(chat, NUM_TOKENS)
    assert free[-1] in eos_token_ids and len(free) < 12
    params = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, min_tokens=16)
    (ours,) = engine.generate([list(chat)], params)
    ref = hf_generate(chat, min_new_tokens=16)
    assert len(ours) >= 16 and ours == ref


def test_min_p_one_equals_greedy(engine, prompt_set, hf_greedy, eos_token_ids) -> None:
    """min_p = 1 keeps only the most likely token, so sampling at any temperature is greedy."""
    p = prompt_set[PROMPTS[1]].token_ids
    (ours,) = engine.generate([list(p)], SamplingParams(max_tokens=NUM_TOKENS, temperature=1.5, min_p=1.0,
                                                        ignore_eos=True, seed=3))
    assert_starts_with_hf(ours, hf_greedy(p, NUM_TOKENS), eos_token_ids)


def test_penalized_and_plain_rows_share_a_batch(engine, prompt_set, hf_greedy) -> None:
    """A penalized request next to plain ones leaves theirs untouched (batched masks hit only its row)."""
    prompts = [list(prompt_set[i].token_ids) for i in PROMPTS]
    params = [greedy(), greedy(frequency_penalty=2.0, logit_bias=((5, 3.0),)), greedy(), greedy(repetition_penalty=1.5)]
    outs = engine.generate(prompts, params)
    for k in (0, 2):
        ref = hf_greedy(prompts[k], NUM_TOKENS)
        assert outs[k][:len(ref)] == ref
    assert outs[1] == engine.generate([prompts[1]], params[1])[0]
    assert outs[3] == engine.generate([prompts[3]], params[3])[0]
