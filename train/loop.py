"""The training loop shared by SFT and DPO: AdamW on the adapter, warmup + schedule, gradient accumulation
and clipping, periodic validation and checkpoints, exact resume, and a progress bar with loss and tokens/s.

A :class:`Task` (``train.sft``, ``train.dpo``) supplies the batches and the loss; the loop knows neither.
Micro-batches form one stream across epochs (batch ``g`` is batch ``g % n`` of epoch ``g // n``), and optimizer
step ``s`` consumes stream items ``s * grad_accum`` onwards, so a resumed run replays the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lorafleet.config.train import TrainConfig
from train import checkpointing
from train.methods import trainable_parameters
from train.schedule import lr_factor, warmup_steps


class TaskBatch(Protocol):
    num_tokens: int  #: non-padding tokens that go through the model
    weight: int  #: loss normalizer units (SFT: target tokens; DPO: pairs)


class Task(Protocol):
    """What the loop trains on. ``loss_sum`` returns the loss summed over the batch's ``weight`` units."""

    num_batches: int  #: micro-batches per epoch

    def batch(self, epoch: int, index: int) -> TaskBatch: ...
    def loss_sum(self, model: Any, batch: TaskBatch) -> torch.Tensor: ...
    def evaluate(self, model: Any) -> dict[str, float]: ...  # must hold "val_loss"


@dataclass
class LoopState:
    """Progress of a run; mutable on purpose (the loop advances it) and saved in every checkpoint."""

    step: int = 0
    num_tokens: int = 0
    train_time_s: float = 0.0  #: seconds inside optimizer steps (the tokens/s denominator)
    wall_time_s: float = 0.0  #: seconds of the whole run so far, over resumes
    loss_curve: list[list[float]] = field(default_factory=list)  #: [step, train loss]
    val_curve: list[dict[str, float]] = field(default_factory=list)  #: {"step", "val_loss", ...}
    resumed_from: list[int] = field(default_factory=list)  #: steps this run was resumed at


@dataclass(frozen=True, slots=True)
class StepPlan:
    """How many optimizer steps a config makes of ``num_batches`` micro-batches per epoch."""

    total_steps: int
    total_micro_batches: int | None  #: None with --max-steps (the stream cycles epochs)

    @staticmethod
    def of(cfg: TrainConfig, num_batches: int) -> "StepPlan":
        if cfg.max_steps is not None:
            return StepPlan(cfg.max_steps, None)
        total = cfg.epochs * num_batches
        return StepPlan(math.ceil(total / cfg.grad_accum), total)


def fit(model: Any, task: Task, cfg: TrainConfig, run_dir: Path, console: Console) -> LoopState:
    """Train ``model``'s adapter on ``task``; resume from the newest checkpoint with ``cfg.resume``."""
    started = time.perf_counter()
    params = list(trainable_parameters(model).items())
    optimizer = torch.optim.AdamW([p for _, p in params], lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = StepPlan.of(cfg, task.num_batches)
    num_warmup = warmup_steps(plan.total_steps, cfg.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, plan.total_steps, num_warmup, cfg.schedule))
    state = LoopState()
    model.train()  # before any forward: an eval-mode pass would repack QLoRA's 4-bit weights (train.methods.qlora)
    checkpoint = checkpointing.latest_checkpoint(run_dir) if cfg.resume else None
    if checkpoint is not None:
        state = _restore(checkpoint, params, optimizer, scheduler)
        console.print(f"resuming from {checkpoint} (step {state.step}/{plan.total_steps})")
    else:
        state.val_curve.append({"step": 0, **task.evaluate(model)})
        console.print(_eval_line(state.val_curve[-1], plan.total_steps))
    wall_base = state.wall_time_s
    with _progress_bar(console) as bar:
        bar_task = bar.add_task(cfg.method, total=plan.total_steps, completed=state.step, loss=float("nan"), tps=0.0)
        while state.step < plan.total_steps:
            loss = _step(model, task, cfg, plan, state, optimizer, scheduler, [p for _, p in params])
            bar.update(bar_task, completed=state.step, loss=loss, tps=state.num_tokens / max(state.train_time_s, 1e-9))
            is_last = state.step == plan.total_steps
            if cfg.eval_every and state.step % cfg.eval_every == 0 and not is_last:
                state.val_curve.append({"step": state.step, **task.evaluate(model)})
                bar.console.print(_eval_line(state.val_curve[-1], plan.total_steps))
            if cfg.save_every and state.step % cfg.save_every == 0 and not is_last:
                state.wall_time_s = wall_base + time.perf_counter() - started
                _save(run_dir, state, params, optimizer, scheduler, cfg.keep_checkpoints)
    state.val_curve.append({"step": state.step, **task.evaluate(model)})
    console.print(_eval_line(state.val_curve[-1], plan.total_steps))
    state.wall_time_s = wall_base + time.perf_counter() - started
    return state


def _step(model: Any, task: Task, cfg: TrainConfig, plan: StepPlan, state: LoopState, optimizer: Any,
          scheduler: Any, params: list[torch.Tensor]) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the step's loss (weighted mean)."""
    first = state.step * cfg.grad_accum
    last = first + cfg.grad_accum
    if plan.total_micro_batches is not None:
        last = min(last, plan.total_micro_batches)
    t0 = time.perf_counter()
    batches = [task.batch(g // task.num_batches, g % task.num_batches) for g in range(first, last)]
    weight = max(1, sum(b.weight for b in batches))
    total = 0.0
    for b in batches:
        loss = task.loss_sum(model, b) / weight
        loss.backward()
        total += float(loss.detach())
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.train_time_s += time.perf_counter() - t0
    state.num_tokens += sum(b.num_tokens for b in batches)
    state.step += 1
    state.loss_curve.append([state.step, total])
    return total


def _save(run_dir: Path, state: LoopState, params: list, optimizer: Any, scheduler: Any, keep: int) -> None:
    payload = {"loop": asdict(state), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "rng": checkpointing.rng_state()}
    checkpointing.save_checkpoint(run_dir, state.step, {n: p for n, p in params}, payload, keep)


def _restore(path: Path, params: list, optimizer: Any, scheduler: Any) -> LoopState:
    weights, payload = checkpointing.load_checkpoint(path)
    with torch.no_grad():
        for name, p in params:
            p.copy_(weights[name].to(p.device, p.dtype))
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    checkpointing.set_rng_state(payload["rng"])
    state = LoopState(**payload["loop"])
    state.resumed_from.append(state.step)
    return state


def _eval_line(metrics: dict[str, float], total_steps: int) -> str:
    shown = " · ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step")
    return f"step {int(metrics['step'])}/{total_steps} · {shown}"


def _progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)
