"""``report.json`` and ``loss.png`` of a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lorafleet.config.train import TrainConfig
from lorafleet.atomic import atomic_file, write_json
from train.artifacts import LOSS_PLOT, REPORT
from train.loop import LoopState
from train.memory import PeakMemory


def tail_mean(curve: list[list[float]], fraction: float = 0.1) -> float | None:
    """Mean loss over the last ``fraction`` of the steps (at least one): a less noisy final train loss."""
    if not curve:
        return None
    tail = curve[-max(1, math.ceil(len(curve) * fraction)):]
    return sum(loss for _, loss in tail) / len(tail)


def build_report(kind: str, cfg: TrainConfig, state: LoopState, peak: PeakMemory, data: dict[str, Any],
                 device: str, dtype: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The report of a finished run (``extra``: task-specific keys such as DPO's reward metrics)."""
    first, last = (state.val_curve[0], state.val_curve[-1]) if state.val_curve else ({}, {})
    val_loss = last.get("val_loss")
    return {
        "kind": kind,
        "method": cfg.method,
        "model": cfg.model,
        "device": device,
        "dtype": dtype,
        "steps": state.step,
        "train_loss": tail_mean(state.loss_curve),
        "initial_val_loss": first.get("val_loss"),
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss) if val_loss is not None and kind == "sft" else None,
        "num_tokens": state.num_tokens,
        "tokens_per_s": state.num_tokens / state.train_time_s if state.train_time_s > 0 else 0.0,
        "peak_memory_bytes": peak.num_bytes,
        "peak_memory_kind": peak.kind,
        "train_time_s": state.train_time_s,
        "time_s": state.wall_time_s,
        "resumed_from_steps": state.resumed_from,
        "data": data,
        **extra,
        "loss_curve": state.loss_curve,
        "val_curve": state.val_curve,
    }


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """``loss.png`` first, then ``report.json``: a report on disk marks a finished run."""
    plot_losses(report["loss_curve"], report["val_curve"], run_dir / LOSS_PLOT)
    write_json(run_dir / REPORT, report)


def plot_losses(loss_curve: list[list[float]], val_curve: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if loss_curve:
        ax.plot([s for s, _ in loss_curve], [v for _, v in loss_curve], label="train loss", lw=1)
    val = [(v["step"], v["val_loss"]) for v in val_curve if v.get("val_loss") is not None]
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
