"""Healing a pruned checkpoint: a short LoRA fine-tune with ``lorafleet train sft`` on plain text, then
``lorafleet train merge`` back into a dense checkpoint. Both run as subprocesses of the CLI (the train stage
is never imported), and their own reports are kept in the output under ``heal/``.

The loss is cross-entropy on the text, or (``heal_loss="distill"``) the KL divergence from the unpruned
input's next-token distribution (``train sft --teacher``). The text is a file, the default set of
:func:`optimize.textdata.healing_texts`, or passages the input writes itself (``heal_samples``), sampled by
our engine (``serve.engine.scoring`` as a process).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from lorafleet.config.optimize import EvalConfig, PruneConfig
from lorafleet.errors import BackendError
from optimize.textdata import CALIBRATION, healing_texts, read_passages

#: LoRA settings of the healing run: rank 16 on every linear layer, a high LR for a short run, packed rows,
#: train's default compute dtype (bf16 where the CPU has it)
HEAL_ARGS = ("--rank", "16", "--alpha", "32", "--lr", "5e-4", "--batch-size", "4", "--max-seq-len", "256",
             "--packing", "--save-every", "0", "--val-fraction", "0.05", "--seed", "0")


#: tokens per self-written passage and words of the calibration passage it continues
SAMPLE_TOKENS, OPENING_WORDS = 256, 8


def self_written_texts(model: Path, num: int, seed: int = 0) -> list[str]:
    """``num`` passages ``model`` writes itself: the first words of each calibration passage in turn, continued by
    sampling at temperature 1 (bf16, our engine). Distillation on them asks the pruned model to match the
    input on the input's own distribution, without any outside text."""
    from lorafleet.loading import load_tokenizer
    from optimize.ppl import run_engine_scoring

    tok = load_tokenizer(model)
    openings = [" ".join(p.split()[:OPENING_WORDS]) for p in read_passages(None, CALIBRATION)]
    prompts = [tok(openings[i % len(openings)], add_special_tokens=False).input_ids for i in range(num)]
    sample = {"prompts": prompts, "max_tokens": SAMPLE_TOKENS, "temperature": 1.0, "seed": seed}
    res = run_engine_scoring(model, EvalConfig(dtype="bfloat16", backend="engine"), [], sample=sample)
    return [tok.decode(p + s, skip_special_tokens=True) for p, s in zip(prompts, res["samples"])]


def _lorafleet() -> list[str]:
    return [sys.executable, "-m", "lorafleet.cli"]


def _run(argv: list[str], what: str, log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise BackendError(f"healing: {what} failed (exit {proc.returncode}): {lines[-1] if lines else ''}; see {log}")


def heal(pruned: Path, dst: Path, cfg: PruneConfig, source: Path) -> dict[str, Any]:
    """Fine-tune ``pruned`` for ``cfg.heal_steps`` steps and merge the adapter; the merged weights, config and
    tokenizer land in ``dst`` (next to ``dst/pruned``). ``source`` is the unpruned input (the teacher of
    ``heal_loss="distill"``, the writer of ``heal_samples``). Returns the train report's key figures."""
    from rich.console import Console

    work = dst / "heal"
    work.mkdir()
    data = work / "heal.jsonl"
    console = Console(stderr=True)
    if cfg.heal_samples:
        with console.status(f"healing: {source.name} writes {cfg.heal_samples} passages to heal on (our engine)"):
            texts = self_written_texts(source, cfg.heal_samples)
    else:
        texts = healing_texts(cfg.heal_data)
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run_dir, merged = work / "run", work / "merged"
    teacher = ["--teacher", str(source)] if cfg.heal_loss == "distill" else []
    with console.status(f"healing: LoRA fine-tune ({cfg.heal_loss}), {cfg.heal_steps} steps on {len(texts)} passages"):
        _run(_lorafleet() + ["train", "sft", "--model", str(pruned), "--data", str(data), "--output", str(run_dir),
                             "--max-steps", str(cfg.heal_steps), *HEAL_ARGS, *teacher], "lorafleet train sft",
             work / "train.log")
    with console.status("healing: merging the adapter"):
        _run(_lorafleet() + ["train", "merge", "--adapter", str(run_dir), "--output", str(merged), "--model", str(pruned),
                             "--dtype", "float32"], "lorafleet train merge", work / "merge.log")
    for f in merged.iterdir():
        if f.is_file():
            shutil.move(str(f), dst / f.name)
    shutil.rmtree(merged)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return {"steps": cfg.heal_steps, "loss": cfg.heal_loss, "num_passages": len(texts),
            "text": "self-written" if cfg.heal_samples else str(cfg.heal_data or "default"),
            "train_report": "heal/run/report.json",
            "train": {k: report[k] for k in ("train_loss", "val_loss", "val_loss_before", "seconds") if k in report}}
