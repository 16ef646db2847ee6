"""Training durability (issue #10): SIGKILL while a checkpoint is being written never leaves a corrupt latest
checkpoint, and ``--resume`` continues from it.

1. ``train.checkpointing.save_checkpoint`` itself, killed at random moments: a writer process saves
   checkpoints back to back (new ones, and ones replacing an existing step) and is SIGKILLed after a random
   delay, again and again. After every kill the newest complete checkpoint loads and holds exactly the
   values of its step. The writers are forked from one process that imported torch once, so each kill costs
   milliseconds, not an interpreter start.
2. A real ``lorafleet train sft`` run killed the moment its second checkpoint's temporary directory appears,
   then resumed with ``--resume`` from the checkpoint before it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.helpers import ENV, LORAFLEET, small_run_args, style_records, write_jsonl

pytestmark = pytest.mark.timeout(600)
KILLS = 24

# Reads "<run_dir> <first_step>" lines; for each, forks a child that writes checkpoints from that step on
# until it is killed, prints the child's pid, and "dead" once it has reaped it.
ZYGOTE = r"""
import os, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from train.checkpointing import save_checkpoint
print("ready", flush=True)
for line in sys.stdin:
    run_dir, first = line.split()
    pid = os.fork()
    if pid == 0:
        step = int(first)
        while True:
            weights = {f"layer{i}.lora_A": torch.full((256, 512), float(step)) for i in range(6)}
            save_checkpoint(Path(run_dir), step, weights, {"loop": {"step": step}, "m": torch.full((512,), float(step))}, 2)
            step += 1
    print(pid, flush=True)
    os.waitpid(pid, 0)  # until the test kills it
    print("dead", flush=True)
"""


def check_latest(run_dir: Path) -> int:
    """The newest complete checkpoint's step, after checking that it loads and every value is its step."""
    from train.checkpointing import latest_checkpoint, load_checkpoint

    latest = latest_checkpoint(run_dir)
    assert latest is not None, "no complete checkpoint"
    step = int(latest.name.split("-")[1])
    weights, state = load_checkpoint(latest)
    assert sorted(weights) == [f"layer{i}.lora_A" for i in range(6)]
    assert all(float(w.min()) == float(w.max()) == step for w in weights.values()), f"{latest} holds other steps' values"
    assert state["loop"]["step"] == step and float(state["m"][0]) == step
    return step


def test_sigkill_during_checkpoint_writes_never_corrupts_the_latest(tmp_path, durability_check) -> None:
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    rng = random.Random(10)
    run_dir = tmp_path / "run"
    interrupted, corrupt, latest = 0, [], 1
    durability_check.update(what="save_checkpoint SIGKILLed at random moments", kills=0, corrupt_latest=0, resumed=0)
    try:
        assert zygote.stdout.readline().strip() == "ready"
        first = 1
        for kill in range(KILLS):
            zygote.stdin.write(f"{run_dir} {first}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            if kill == 0:  # a first complete checkpoint, so there always is a latest
                while not list((run_dir / "checkpoints").glob("step-*/state.pt")):
                    time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(pid, signal.SIGKILL)
            assert zygote.stdout.readline().strip() == "dead"
            interrupted += bool(list((run_dir / "checkpoints").glob(".tmp-*")))
            try:
                latest = check_latest(run_dir)
            except (AssertionError, OSError, RuntimeError, ValueError) as e:
                corrupt.append(f"kill {kill}: {e}")
            durability_check.update(kills=kill + 1, corrupt_latest=len(corrupt), interrupted_writes=interrupted)
            first = max(1, latest - rng.randint(0, 1))  # sometimes rewrite the latest step: the replace path
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    assert not corrupt, corrupt
    assert interrupted >= KILLS // 3, f"only {interrupted} kills landed inside a write: the test did not test much"


def test_train_run_killed_during_a_checkpoint_write_resumes(tmp_path, durability_check, train_cli) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", style_records(8, seed=5))
    out = tmp_path / "run"
    args = ["train", "sft", *small_run_args(data, out, "--max-steps", "3", "--batch-size", "2", "--val-fraction", "0",
                                            "--seed", "3", save_every=1)]
    durability_check.update(what="lorafleet train sft SIGKILLed while writing checkpoint 2, then --resume", kills=0,
                            corrupt_latest=0, resumed=0)
    proc = subprocess.Popen([LORAFLEET, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + 400
    while not list(checkpoints.glob(".tmp-step-00000002-*")):  # the second checkpoint is being written
        assert proc.poll() is None, f"run exited early: {proc.stderr.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, "no second checkpoint after 400 s"
        time.sleep(0.002)
    proc.kill()
    proc.wait(timeout=30)
    from train.checkpointing import latest_checkpoint, load_checkpoint

    durability_check.update(kills=1, corrupt_latest=1)
    latest = latest_checkpoint(out)
    assert latest is not None and latest.name in ("step-00000001", "step-00000002")
    load_checkpoint(latest)  # loads: not torn
    durability_check.update(corrupt_latest=0)
    train_cli(*args, "--resume")
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_steps"] == [int(latest.name.split("-")[1])] and report["steps"] == 3
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    durability_check.update(resumed=1, resumed_from=latest.name)
