"""n > 1 on the real model: the choices fork from one prefill (shared blocks, copy-on-write), repeat with a
seed, and each equals the request run alone with its own seed (seed + index), which checks the copied KV."""

from __future__ import annotations

from collections import defaultdict

import pytest

from serve.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(300)


def run(engine, prompt: list[int], params: SamplingParams, rid: str = "n") -> dict[int, list[int]]:
    """Choice index -> output token ids."""
    engine.add_request(rid, prompt, params)
    out: dict[int, list[int]] = defaultdict(list)
    while engine.has_unfinished:
        for o in engine.step():
            out[o.index].extend(o.token_ids)
    return dict(out)


@pytest.fixture(scope="module")
def prompt(tokenizer) -> list[int]:
    # 21 tokens: the prompt's last block is partial, so the choices' first writes copy it
    ids = tokenizer("Write one sentence about a lighthouse keeper who finds a message in a bottle on the beach:").input_ids
    assert len(ids) % 16 != 0
    return ids


@pytest.mark.slow  # full tier: ~7 s; test_openai_features checks seeded n through the server
def test_choices_repeat_with_a_seed_and_equal_independent_runs(engine, prompt) -> None:
    params = SamplingParams(max_tokens=20, temperature=0.9, seed=42, n=4, ignore_eos=True)
    first = run(engine, prompt, params)
    assert sorted(first) == [0, 1, 2, 3] and all(len(v) == 20 for v in first.values())
    assert len({tuple(v) for v in first.values()}) == 4, "different choices"
    assert run(engine, prompt, params) == first
    for i in range(4):  # choice i samples with seed + i, from KV it shares or copied
        alone = run(engine, prompt, SamplingParams(max_tokens=20, temperature=0.9, seed=42 + i, ignore_eos=True), f"a{i}")
        assert alone[0] == first[i], f"choice {i}"


def test_greedy_choices_are_all_the_greedy_output(engine, prompt) -> None:
    one = run(engine, prompt, SamplingParams(max_tokens=12, temperature=0.0))
    three = run(engine, prompt, SamplingParams(max_tokens=12, temperature=0.0, n=3))
    assert three == {0: one[0], 1: one[0], 2: one[0]}


def test_the_prompt_is_computed_once(make_engine, prompt) -> None:
    eng = make_engine(num_kv_blocks=64, enable_prefix_caching=False)
    run(eng, prompt, SamplingParams(max_tokens=4, temperature=1.0, seed=1, n=4))
    stats = eng.stats().scheduler
    assert stats.num_computed_prompt_tokens == len(prompt)
    assert stats.prefix_query_tokens == len(prompt)
    assert eng.block_manager.num_free_blocks == 64, "every shared and copied block came back"


def test_abort_frees_every_choice(engine, prompt) -> None:
    free = engine.block_manager.num_free_blocks
    engine.add_request("ab", prompt, SamplingParams(max_tokens=50, temperature=1.0, n=3))
    engine.step()  # the prompt, and the forks
    engine.step()
    assert engine.block_manager.num_free_blocks < free
    assert engine.abort("ab") and not engine.has_unfinished
    assert engine.block_manager.num_free_blocks == free
