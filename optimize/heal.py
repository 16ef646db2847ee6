"""Healing a pruned checkpoint: a short LoRA fine-tune with ``lorafleet train sft`` on plain text, then
``lorafleet train merge`` back into a dense checkpoint. Both run as subprocesses of the CLI (the train stage
is never imported), and their own reports are kept in the output under ``heal/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from lorafleet.config.optimize import PruneConfig
from lorafleet.errors import BackendError
from optimize.textdata import healing_texts

#: LoRA settings of the healing run: rank 16 on every linear layer, a high LR for a short run, packed rows,
#: train's default compute dtype (bf16 where the CPU has it)
HEAL_ARGS = ("--rank", "16", "--alpha", "32", "--lr", "5e-4", "--batch-size", "4", "--max-seq-len", "256",
             "--packing", "--save-every", "0", "--val-fraction", "0.05", "--seed", "0")


def _lorafleet() -> list[str]:
    return [sys.executable, "-m", "lorafleet.cli"]


def _run(argv: list[str], what: str, log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise BackendError(f"healing: {what} failed (exit {proc.returncode}): {lines[-1] if lines else ''}; see {log}")


def heal(pruned: Path, dst: Path, cfg: PruneConfig) -> dict[str, Any]:
    """Fine-tune ``pruned`` for ``cfg.heal_steps`` steps and merge the adapter; the merged weights, config and
    tokenizer land in ``dst`` (next to ``dst/pruned``). Returns the train report's key figures."""
    from rich.console import Console

    work = dst / "heal"
    work.mkdir()
    data = work / "heal.jsonl"
    texts = healing_texts(cfg.heal_data)
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run_dir, merged = work / "run", work / "merged"
    console = Console(stderr=True)
    with console.status(f"healing: LoRA fine-tune, {cfg.heal_steps} steps on {len(texts)} passages"):
        _run(_lorafleet() + ["train", "sft", "--model", str(pruned), "--data", str(data), "--output", str(run_dir),
                             "--max-steps", str(cfg.heal_steps), *HEAL_ARGS], "lorafleet train sft", work / "train.log")
    with console.status("healing: merging the adapter"):
        _run(_lorafleet() + ["train", "merge", "--adapter", str(run_dir), "--output", str(merged), "--model", str(pruned),
                             "--dtype", "float32"], "lorafleet train merge", work / "merge.log")
    for f in merged.iterdir():
        if f.is_file():
            shutil.move(str(f), dst / f.name)
    shutil.rmtree(merged)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return {"steps": cfg.heal_steps, "num_passages": len(texts), "train_report": "heal/run/report.json",
            "train": {k: report[k] for k in ("train_loss", "val_loss", "val_loss_before", "seconds") if k in report}}
