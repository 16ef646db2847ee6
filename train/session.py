"""One training run from start to finish, around the task-specific parts of ``train.sft`` and ``train.dpo``:
the run directory (fresh or resumed), the model, and the artifacts written at the end."""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from lorafleet import atomic
from lorafleet.chat import template_hash
from lorafleet.config.train import TrainConfig, to_mapping
from lorafleet.errors import ConfigError
from lorafleet.loading import load_tokenizer, resolve_model
from train import artifacts, methods, runtime
from train.checkpointing import CHECKPOINTS
from train.config_file import EFFECTIVE_CONFIG, dump_config, read_yaml, with_absolute_paths
from train.data import BadLine, read_train_val
from train.encode import encode_all
from train.loop import LoopState
from train.memory import PeakMemory
from train.methods.dora import NOT_SERVABLE
from train.report import build_report, write_report

#: Settings that may differ between an interrupted run and its --resume.
RESUME_MAY_CHANGE = ("resume", "num_threads")


@dataclass(frozen=True, slots=True)
class Session:
    """Everything fixed for the length of a run."""

    cfg: TrainConfig
    run_dir: Path
    model_dir: Path  #: the base checkpoint
    device: torch.device
    dtype: torch.dtype  #: compute dtype
    tokenizer: Any
    console: Console  #: progress and log lines (stderr)
    is_resuming: bool  #: --resume of an interrupted run in run_dir


def open_session(cfg: TrainConfig) -> Session:
    """Resolve model, device and dtype and check the output dir (fresh, or resumable with the same settings).
    Nothing is written until :func:`start_run`."""
    _quiet_libraries()
    cfg = with_absolute_paths(cfg)
    model_dir = resolve_model(cfg.model)
    device = runtime.resolve_device(cfg.device)
    dtype = runtime.resolve_dtype(cfg.dtype, cfg.method, device)
    is_resuming = _check_run_dir(cfg)
    runtime.set_threads(cfg.num_threads)
    return Session(cfg, cfg.output, model_dir, device, dtype, load_tokenizer(model_dir), Console(stderr=True), is_resuming)


def _check_run_dir(cfg: TrainConfig) -> bool:
    """Whether ``cfg.output`` holds an interrupted run to resume (with the same settings); raise if it cannot be used."""
    run_dir = cfg.output
    saved = run_dir / EFFECTIVE_CONFIG
    if (run_dir / artifacts.REPORT).exists():
        raise ConfigError(f"{run_dir} already holds a finished run ({artifacts.REPORT}); choose another --output")
    if saved.is_file():
        if not cfg.resume:
            raise ConfigError(f"{run_dir} holds an interrupted run; pass --resume to continue it or choose another --output")
        before, now = read_yaml(saved), to_mapping(cfg)
        changed = sorted(k for k in set(before) | set(now) if k not in RESUME_MAY_CHANGE and before.get(k) != now.get(k))
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ConfigError(f"--resume with settings different from the interrupted run in {run_dir} ({diffs})")
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"--output {run_dir} exists and is not empty (and is not an interrupted run)")
    return False


def start_run(session: Session) -> None:
    """Claim the run directory once the data has been read without error: save the effective config (a fresh
    run) or clear a killed run's temporary files (a resumed one)."""
    if session.is_resuming:
        artifacts.remove_stale_temporaries(session.run_dir)
    else:
        atomic.write_bytes(session.run_dir / EFFECTIVE_CONFIG, dump_config(session.cfg))


def build_model(session: Session) -> Any:
    """The PEFT model; a fresh adapter is initialised from ``seed``, so equal seeds give equal runs."""
    torch.manual_seed(session.cfg.seed)
    session.console.print(f"loading {session.model_dir} for {session.cfg.method} ({str(session.dtype).removeprefix('torch.')} "
                          f"on {session.device})")
    return methods.build_model(session.cfg, session.model_dir, session.device, session.dtype)


def finish(session: Session, model: Any, kind: str, state: LoopState, peak: PeakMemory, data: dict[str, Any],
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the adapter (and merged checkpoint), manifest, report and loss plot; print where they are."""
    cfg, run_dir = session.cfg, session.run_dir
    adapter_dir = artifacts.save_adapter(model, run_dir / artifacts.ADAPTER, session.model_dir, methods.TRAINED)
    if cfg.merge:
        from train.merge import merge_adapter

        merge_adapter(adapter_dir, session.model_dir, run_dir / artifacts.MERGED, "float32", session.console)
    artifacts.write_manifest(run_dir, artifacts.adapter_manifest(kind, adapter_dir, cfg.method,
                                                                  template_hash(session.tokenizer), cfg.merge))
    report = build_report(kind, cfg, state, peak, data, str(session.device), str(session.dtype).removeprefix("torch."),
                          extra or {})
    write_report(run_dir, report)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # only needed to resume, and the run is finished
    _print_summary(session, report)
    return report


def _print_summary(session: Session, report: dict[str, Any]) -> None:
    run_dir = session.run_dir
    print(f"val_loss {_num(report['initial_val_loss'])} -> {_num(report['val_loss'])} · {report['tokens_per_s']:.0f} tok/s · "
          f"peak {report['peak_memory_bytes'] / 2**20:.0f} MiB · {report['time_s']:.0f} s")
    print(f"adapter: {run_dir / artifacts.ADAPTER}")
    if session.cfg.merge:
        print(f"merged:  {run_dir / artifacts.MERGED}")
    print(f"report:  {run_dir / artifacts.REPORT}")
    if session.cfg.method == "dora":
        session.console.print(f"[yellow]note:[/] {NOT_SERVABLE.format(adapter=run_dir)}", soft_wrap=True, highlight=False)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def load_data(session: Session, reader: Callable[[Path, bool], Any], unit: str) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Read (with ``reader``: samples or pairs), split and encode the data: (train, val, the report's ``data``).
    Every line or sample not trained on is counted, reported and said on the console."""
    cfg = session.cfg
    items, val_items, bad = read_train_val(reader, cfg.data, cfg.val_data, cfg.val_fraction, cfg.skip_bad)
    for b in bad:
        session.console.print(f"[yellow]skipped[/] {b}", soft_wrap=True, highlight=False)
    train, dropped = encode_all(session.tokenizer, items, cfg.max_seq_len)
    val, dropped_val = encode_all(session.tokenizer, val_items, cfg.max_seq_len)
    return train, val, _data_report(session, train, val, bad, dropped + dropped_val, unit)


def _data_report(session: Session, train: list[Any], val: list[Any], bad: list[BadLine], dropped: list[Any],
                 unit: str) -> dict[str, Any]:
    cfg = session.cfg
    if not train:
        raise ConfigError(f"{cfg.data}: no {unit} has reply tokens left within --max-seq-len {cfg.max_seq_len}")
    num_truncated = sum(e.is_truncated for e in train + val)
    if num_truncated or dropped:
        session.console.print(f"[yellow]{num_truncated} {unit} truncated to {cfg.max_seq_len} tokens; {len(dropped)} left "
                              "without reply tokens and not used (lines in report.json data.without_targets)[/]")
    num_tokens = sum(e.num_tokens for e in train)
    session.console.print(f"data: {len(train)} train / {len(val)} val {unit}, {num_tokens} train tokens")
    return {"num_train": len(train), "num_val": len(val), "num_train_tokens": num_tokens, "num_truncated": num_truncated,
            "num_skipped": len(bad), "skipped": [b.as_dict() for b in bad], "without_targets": [x.line for x in dropped]}


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, optional-kernel notices) off the console."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
