"""`lorafleet train merge` (issue #5, "done when" 3): the merged checkpoint's greedy output equals
base+adapter's on 20 prompts, both served by our engine in float32; the checkpoint carries tokenizer and
chat template, and merge refuses what it cannot do with one clear line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.train.helpers import ENV, LORAFLEET, run_cli
from lorafleet.loading import check_checkpoint, load_tokenizer

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def merged(style_run: Path, train_root: Path) -> Path:
    out = train_root / "style-merged"
    run_cli("train", "merge", "--adapter", str(style_run), "--output", str(out))
    return out


def test_merged_checkpoint_is_complete(merged: Path, base_model_path: Path) -> None:
    check_checkpoint(merged)  # config, safetensors, tokenizer
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["dtype" if "dtype" in cfg else "torch_dtype"] == "float32"
    assert load_tokenizer(merged).chat_template == load_tokenizer(base_model_path).chat_template
    assert (merged / "generation_config.json").is_file()
    assert not list(merged.glob("*.bin"))


def test_merged_greedy_equals_base_plus_adapter_on_20_prompts(merged, style_run, make_engine, train_engine, prompt_set,
                                                              greedy) -> None:
    from serve.engine.sampling_params import SamplingParams

    train_engine.load_adapter("style", style_run / "adapter")
    prompts = [list(p.token_ids) for p in prompt_set[:20]]
    params = SamplingParams(max_tokens=24, temperature=0)
    with_adapter = train_engine.generate(prompts, params, ["style"] * 20)
    merged_engine = make_engine(model=str(merged), max_loras=0)
    assert merged_engine.generate(prompts, params) == with_adapter
    assert with_adapter != train_engine.generate(prompts, params)  # the adapter matters on these prompts


@pytest.mark.parametrize(("args", "message"), [
    (("--adapter", "/nonexistent/run"), "error: /nonexistent/run: neither a PEFT adapter dir nor a run dir"),
])
def test_merge_errors_are_one_line(args, message, tmp_path: Path) -> None:
    out = subprocess.run([LORAFLEET, "train", "merge", *args, "--output", str(tmp_path / "m")], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(message), out.stderr


def test_merge_refuses_an_existing_output(style_run: Path, tmp_path: Path) -> None:
    out = subprocess.run([LORAFLEET, "train", "merge", "--adapter", str(style_run / "adapter"), "--output", str(tmp_path)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 2 and "already exists" in out.stderr.strip().splitlines()[-1]
