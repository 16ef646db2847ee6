"""Prompt logprobs from the prefill against HF transformers' fp32 log-softmax of the same prompt: in one chunk,
over chunked prefill, and when the prompt's blocks are already in the prefix cache (they are recomputed)."""

from __future__ import annotations

import pytest
import torch

from serve.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1e-4
K = 3


def run(engine, rid: str, prompt: list[int], params: SamplingParams):
    """First output (which carries the prompt logprobs) and the number of cached prompt tokens."""
    engine.add_request(rid, prompt, params)
    first = None
    while engine.has_unfinished:
        for out in engine.step():
            if out.request_id == rid and first is None:
                first = out
    return first


def hf_prompt_logprobs(hf_model, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0, :-1].float(), -1)


def assert_matches_hf(entries, prompt: list[int], ref: torch.Tensor) -> None:
    assert len(entries) == len(prompt) and entries[0] is None
    got = torch.tensor([e.logprob for e in entries[1:]])
    want = ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    assert torch.allclose(got, want, atol=TOLERANCE), float((got - want).abs().max())
    for i, e in enumerate(entries[1:]):
        assert e.token_id == prompt[i + 1] and len(e.top) == K
        top = ref[i].topk(K)
        assert [t for t, _ in e.top] == top.indices.tolist()
        assert e.rank == int((ref[i] > ref[i, prompt[i + 1]]).sum()) + 1


def test_prompt_logprobs_equal_hf_and_skip_the_prefix_cache(engine, prompt_set, hf_model) -> None:
    prompt = list(prompt_set[12].token_ids)  # the ~250-token passage
    ref = hf_prompt_logprobs(hf_model, prompt)
    params = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=K)
    warm = run(engine, "plp-warm", prompt, SamplingParams(max_tokens=1, temperature=0.0))  # fills the prefix cache
    assert warm.prompt_logprobs is None
    out = run(engine, "plp", prompt, params)
    assert out.num_cached_tokens == 0, "prompt logprobs need every prompt row: the cache is skipped"
    assert_matches_hf(out.prompt_logprobs, prompt, ref)
    assert run(engine, "plp-after", prompt, SamplingParams(max_tokens=1, temperature=0.0)).num_cached_tokens > 0


def test_prompt_logprobs_over_chunked_prefill(make_engine, prompt_set, hf_model) -> None:
    small = make_engine(max_num_batched_tokens=64, max_loras=0, num_kv_blocks=64)
    prompt = list(prompt_set[12].token_ids)
    out = run(small, "chunked", prompt, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=K, n=2))
    assert_matches_hf(out.prompt_logprobs, prompt, hf_prompt_logprobs(hf_model, prompt))


def test_one_token_prompt_has_only_null_and_the_range_is_checked(engine) -> None:
    assert run(engine, "one", [42], SamplingParams(max_tokens=1, prompt_logprobs=0)).prompt_logprobs == (None,)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
