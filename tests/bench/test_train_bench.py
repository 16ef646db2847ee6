"""`lorafleet bench train` (issue #5, "done when" 6): our SFT path and the HF Trainer + PEFT baseline on
the same generated data in one run, with the result keys; the committed bench/results/train.json is a real
run that meets the 1.3x target without costing validation loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.train import make_records

ROOT = Path(__file__).resolve().parents[2]
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))


def test_generated_replies_spread_over_the_length_range(tokenizer) -> None:
    records = make_records(40, 16, 200, seed=0)
    assert records == make_records(40, 16, 200, seed=0) and records != make_records(40, 16, 200, seed=1)
    lengths = sorted(len(tokenizer(r["messages"][-1]["content"]).input_ids) for r in records)
    assert lengths[0] < 24 and lengths[-1] > 150  # variable length is the point: padding wastes the baseline's time


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bench_train_runs_both_and_writes_the_keys(bench_out: Path) -> None:
    out = bench_out / "train.json"
    threads = os.environ.get("LORAFLEET_TEST_THREADS", "1")
    proc = subprocess.run([LORAFLEET, "bench", "train", "--json", str(out), "--num-samples", "22", "--num-val", "3",
                           "--min-tokens", "8", "--max-tokens", "48", "--num-threads", threads],
                          capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["tokens_per_s"]) == {"ours", "baseline"} and set(results["val_loss"]) == {"ours", "baseline"}
    assert all(v > 0 for v in results["tokens_per_s"].values())
    assert all(0 < v <= results["initial_val_loss"] + 1e-6 for v in results["val_loss"].values())
    assert results["speedup"] == pytest.approx(results["tokens_per_s"]["ours"] / results["tokens_per_s"]["baseline"])
    assert results["data"]["num_train"] == 22 and results["data"]["num_val"] == 3
    start, val = results["initial_val_loss"], results["val_loss"]
    assert results["val_loss_reduction_vs_baseline"] == pytest.approx((start - val["ours"]) / (start - val["baseline"]), abs=1e-4)
    assert "--packing" in results["ours"]["flags"] and results["baseline"]["dtype"] == "float32"
    assert "speedup" in proc.stdout


def test_committed_result_meets_the_target() -> None:
    results = json.loads((ROOT / "bench" / "results" / "train.json").read_text())
    assert results["speedup"] >= 1.3 and results["target"]["met"]
    assert results["tokens_per_s"]["ours"] >= 1.3 * results["tokens_per_s"]["baseline"]
    # Quality: ours removes nearly all of the validation loss the baseline removes, on 64 held-out samples (the
    # committed run: 96.5%, 0.0835 vs 0.0771 from 0.260; docs/train.md).
    val, start = results["val_loss"], results["initial_val_loss"]
    assert results["data"]["num_val"] >= 64
    assert (start - val["ours"]) >= 0.9 * (start - val["baseline"])
    assert results["val_loss_reduction_vs_baseline"] == pytest.approx((start - val["ours"]) / (start - val["baseline"]), abs=1e-4)
    assert results["data"]["tokens_max"] > 4 * results["data"]["tokens_min"]
