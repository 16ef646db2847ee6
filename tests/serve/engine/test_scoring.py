"""``serve.engine.scoring``, the engine as a JSON process for other stages: the sampling job that writes
healing text, and the KV budget it sizes for each job."""

from __future__ import annotations

from lorafleet.config import EngineConfig
from serve.engine.scoring import _blocks_needed, sample_continuations


def test_sampled_continuations_differ_per_prompt_and_repeat_per_seed(make_engine, tokenizer) -> None:
    engine = make_engine(dtype="bfloat16")
    prompt = tokenizer("The river rises in the hills", add_special_tokens=False).input_ids
    first = sample_continuations(engine, [prompt] * 3, max_tokens=12, temperature=1.0, seed=7)
    assert all(1 <= len(s) <= 12 for s in first)
    assert len({tuple(s) for s in first}) == 3  # seed + i per prompt: the same prompt, three texts
    assert sample_continuations(engine, [prompt] * 3, max_tokens=12, temperature=1.0, seed=7) == first
    assert not engine.has_unfinished


def test_kv_blocks_fit_one_window_or_a_full_batch_of_samples(base_model_path) -> None:
    cfg = EngineConfig(model=str(base_model_path), block_size=16, max_num_seqs=4)
    assert _blocks_needed([[1] * 33], None, None, cfg) == 3 + 1
    assert _blocks_needed([], {"prompt_ids": [1] * 10, "num_tokens": 22}, None, cfg) == 3 + 1  # 10 + 22 + 1 tokens
    sample = {"prompts": [[1] * 8] * 10, "max_tokens": 24}  # 32 tokens = 2 blocks each, 4 at a time
    assert _blocks_needed([[1] * 33], None, sample, cfg) == 4 * 2 + 1
