"""--resume after SIGKILL (issue #5, "done when" 4): a run killed mid-way and resumed ends with the same
adapter weights as an uninterrupted run with the same seed (to 1e-5), with dropout, gradient accumulation
and an epoch boundary in between; resuming refuses changed settings and a fresh run refuses an interrupted dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.train.helpers import ENV, LORAFLEET, small_run_args, style_records, write_jsonl

pytestmark = pytest.mark.timeout(900)

# 8 samples, 2 per micro-batch, 2 micro-batches per step: 2 steps per epoch, so 5 steps cross 2 epoch
# boundaries; dropout 0.1 makes the result depend on the restored RNG state.
SETTINGS = ("--max-steps", "5", "--batch-size", "2", "--grad-accum", "2", "--dropout", "0.1", "--lr", "1e-3",
            "--val-fraction", "0", "--seed", "3", "--skip-bad")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 good samples and, on line 5, a bad one that --skip-bad skips and reports."""
    path = write_jsonl(tmp_path_factory.mktemp("resume") / "data.jsonl", style_records(8, seed=5))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + '{"prompt": "no completion"}\n' + "".join(lines[4:]))
    return path


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "sft", *small_run_args(data, out, *SETTINGS, *extra, save_every=2)]


def _kill_after_first_checkpoint(data: Path, out: Path) -> None:
    proc = subprocess.Popen([LORAFLEET, *_args(data, out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    first = out / "checkpoints" / "step-00000002" / "state.pt"
    deadline = time.monotonic() + 600
    while not first.exists():
        assert proc.poll() is None, f"run exited early: {proc.stderr.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _one_line_error(*args: str) -> str:
    out = subprocess.run([LORAFLEET, *args], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 2, out.stderr
    return out.stderr.strip().splitlines()[-1]


def test_resume_after_sigkill_matches_uninterrupted_run(data: Path, tmp_path: Path, train_cli) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    printed = train_cli(*_args(data, straight)).stderr
    assert f"skipped {data}:5: 'completion' must be a non-empty string" in " ".join(printed.split())
    skipped = json.loads((straight / "report.json").read_text())["data"]["skipped"]
    assert skipped == [{"file": str(data), "line": 5, "reason": "'completion' must be a non-empty string (or one assistant message)"}]
    _kill_after_first_checkpoint(data, killed)
    assert not (killed / "report.json").exists() and not (killed / "adapter").exists()

    assert "holds an interrupted run; pass --resume" in _one_line_error(*_args(data, killed))
    changed = _one_line_error(*_args(data, killed, "--resume", "--lr", "5e-4"))
    assert "--resume with settings different" in changed and "lr: 0.001 -> 0.0005" in changed

    train_cli(*_args(data, killed, "--resume"))
    report = json.loads((killed / "report.json").read_text())
    assert report["resumed_from_steps"] and report["resumed_from_steps"][0] in (2, 4)
    assert report["steps"] == 5
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 30
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, f"resumed adapter differs by {worst}"
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # trained, not the zero init
    straight_curve = json.loads((straight / "report.json").read_text())["loss_curve"]
    assert [s for s, _ in report["loss_curve"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in report["loss_curve"]] == pytest.approx([v for _, v in straight_curve], abs=1e-5)
