"""Typed settings of ``lorafleet train sft|dpo|merge`` and ``lorafleet bench train`` (stdlib only).

One source of defaults: the CLI flags, the YAML config files (``--config``) and the Python API all read the
fields below. :func:`from_mapping` turns a YAML/CLI mapping into a validated config and reports every problem
at once.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.errors import ConfigError

METHODS = ("lora", "qlora", "dora")
SCHEDULES = ("cosine", "linear", "constant")
TRAIN_DTYPES = ("auto", "float32", "bfloat16")
MERGE_DTYPES = ("float32", "bfloat16", "float16")
#: LoRA ranks vLLM accepts (``vllm.config.lora.LoRAConfig.max_lora_rank``); other ranks are refused at load.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: PEFT's shorthand for every linear layer of the transformer blocks (not the LM head).
ALL_LINEAR = "all-linear"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Settings shared by SFT and DPO. Every field is a ``--kebab-case`` flag and a key of the YAML config."""

    data: Path = field(metadata={"help": "Training data, JSONL (one JSON object per line; see docs/train.md)."})
    output: Path = field(metadata={"help": "Run directory: adapter/, report.json, config.yaml, checkpoints/."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model: provisioned name or HF checkpoint dir."})
    val_data: Path | None = field(default=None, metadata={"help": "Validation JSONL; default: a held-out split of --data."})
    val_fraction: float = field(
        default=0.05, metadata={"help": "Share of --data held out for validation (stable: chosen by content hash)."})
    skip_bad: bool = field(default=False, metadata={"help": "Skip malformed lines (each is reported) instead of stopping."})
    max_seq_len: int = field(default=1024, metadata={"help": "Longest sample in tokens; longer ones are truncated and counted."})
    method: str = field(default="lora", metadata={"help": "lora | qlora (4-bit NF4 base, bitsandbytes) | dora (weight-decomposed)."})
    rank: int = field(default=16, metadata={"help": f"LoRA rank r; one of vLLM's {VLLM_LORA_RANKS} unless --method dora."})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / rank."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: tuple[str, ...] = field(
        default=(ALL_LINEAR,), metadata={"help": "Modules to adapt, comma-separated; 'all-linear' = every linear layer of the blocks."})
    init_adapter: Path | None = field(
        default=None, metadata={"help": "Start from this PEFT adapter (e.g. an SFT adapter before DPO) instead of a fresh one."})
    lr: float = field(default=2e-4, metadata={"help": "Peak learning rate (AdamW)."})
    schedule: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warmup: cosine | linear | constant."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of the optimizer steps spent warming up linearly from 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the adapter weights."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0 = no clipping)."})
    epochs: int = field(default=1, metadata={"help": "Passes over the training data."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer steps (overrides --epochs)."})
    batch_size: int = field(
        default=8, metadata={"help": "Samples per micro-batch (with --packing: about that many, packed into rows)."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, about 30% slower."})
    dtype: str = field(
        default="auto", metadata={"help": "Compute dtype: auto (bfloat16 where the CPU/GPU has it, else float32) | float32 | bfloat16."})
    device: str = field(default="auto", metadata={"help": "'cpu', 'cuda[:N]' or 'auto' (CUDA when present)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch intra-op threads on CPU (default: all cores)."})
    seed: int = field(default=0, metadata={"help": "Seed of adapter init, data order and dropout; equal seeds give equal runs."})
    eval_every: int = field(default=0, metadata={"help": "Validate every N optimizer steps (0: only before and after training)."})
    save_every: int = field(default=50, metadata={"help": "Checkpoint every N optimizer steps for --resume (0: never)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Checkpoints kept on disk (oldest removed first)."})
    resume: bool = field(default=False, metadata={"help": "Continue the interrupted run in --output from its last checkpoint."})
    merge: bool = field(
        default=False, metadata={"help": "Also write merged/: the base reloaded in float32 with the adapter merged in."})

    def __post_init__(self) -> None:
        problems = _common_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class SftConfig(TrainConfig):
    """``lorafleet train sft``: supervised fine-tuning, loss on assistant (completion) tokens only."""

    packing: bool = field(
        default=False, metadata={"help": "Pack samples into rows of --max-seq-len tokens (no attention across samples)."})
    teacher: str | None = field(default=None, metadata={
        "help": "Distil from this model (provisioned name or HF checkpoint dir, same vocabulary): the loss is "
                "KL(teacher || student) over the whole vocabulary at every reply token instead of cross-entropy."})


@dataclass(frozen=True, slots=True)
class DpoConfig(TrainConfig):
    """``lorafleet train dpo``: direct preference optimization (sigmoid loss) against the frozen reference."""

    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the implicit KL penalty to the reference."})

    def __post_init__(self) -> None:
        problems = _common_problems(self)
        if not self.beta > 0:
            problems.append(f"beta must be positive, got {self.beta}")
        if problems:
            raise ConfigError("; ".join(problems))


def _common_problems(c: TrainConfig) -> list[str]:
    p = []
    if c.method not in METHODS:
        p.append(f"method must be one of {METHODS}, got '{c.method}'")
    if c.method != "dora" and c.rank not in VLLM_LORA_RANKS:
        p.append(f"rank must be one of vLLM's supported LoRA ranks {VLLM_LORA_RANKS}, got {c.rank}")
    if c.rank < 1:
        p.append(f"rank must be positive, got {c.rank}")
    if not c.alpha > 0:
        p.append(f"alpha must be positive, got {c.alpha}")
    if not 0 <= c.dropout < 1:
        p.append(f"dropout must be in [0, 1), got {c.dropout}")
    if not c.target_modules or any(not _MODULE_NAME.match(m) and m != ALL_LINEAR for m in c.target_modules):
        p.append(f"target_modules must be module names or '{ALL_LINEAR}', got {list(c.target_modules)}")
    if not 0 <= c.val_fraction < 1:
        p.append(f"val_fraction must be in [0, 1), got {c.val_fraction}")
    if c.max_seq_len < 16:
        p.append(f"max_seq_len must be at least 16, got {c.max_seq_len}")
    if c.schedule not in SCHEDULES:
        p.append(f"schedule must be one of {SCHEDULES}, got '{c.schedule}'")
    if not c.lr > 0:
        p.append(f"lr must be positive, got {c.lr}")
    if not 0 <= c.warmup_ratio < 1:
        p.append(f"warmup_ratio must be in [0, 1), got {c.warmup_ratio}")
    for name in ("weight_decay", "max_grad_norm"):
        if getattr(c, name) < 0:
            p.append(f"{name} must be non-negative, got {getattr(c, name)}")
    for name in ("epochs", "batch_size", "grad_accum", "keep_checkpoints"):
        if getattr(c, name) < 1:
            p.append(f"{name} must be at least 1, got {getattr(c, name)}")
    for name in ("max_steps", "num_threads"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            p.append(f"{name} must be at least 1, got {getattr(c, name)}")
    for name in ("eval_every", "save_every"):
        if getattr(c, name) < 0:
            p.append(f"{name} must be non-negative, got {getattr(c, name)}")
    if c.dtype not in TRAIN_DTYPES:
        p.append(f"dtype must be one of {TRAIN_DTYPES}, got '{c.dtype}'")
    if c.method == "qlora" and c.dtype == "float32":
        p.append("dtype float32 is not a QLoRA compute dtype; use auto or bfloat16")
    if c.device not in ("auto", "cpu", "cuda") and not c.device.startswith("cuda:"):
        p.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{c.device}'")
    return p


@dataclass(frozen=True, slots=True)
class MergeConfig:
    """``lorafleet train merge``: fold an adapter into its base and save a plain HF checkpoint."""

    adapter: Path = field(metadata={"help": "PEFT adapter dir, or a run dir of `lorafleet train` (its adapter/ is used)."})
    output: Path = field(metadata={"help": "Directory to write the merged checkpoint to (must not exist)."})
    model: str | None = field(
        default=None, metadata={"help": "Base model (name or dir); default: the adapter's base_model_name_or_path."})
    dtype: str = field(default="float32", metadata={"help": "Dtype of the saved weights: float32 | bfloat16 | float16."})

    def __post_init__(self) -> None:
        if self.dtype not in MERGE_DTYPES:
            raise ConfigError(f"dtype must be one of {MERGE_DTYPES}, got '{self.dtype}'")


@dataclass(frozen=True, slots=True)
class TrainBenchConfig:
    """``lorafleet bench train``: our SFT path vs a plain HF Trainer + PEFT baseline on the same data, one run."""

    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model name or checkpoint dir."})
    num_samples: int = field(default=128, metadata={"help": "Generated chat samples to train on."})
    num_val: int = field(default=64, metadata={"help": "Generated held-out samples for val_loss (not trained on)."})
    min_tokens: int = field(default=16, metadata={"help": "Shortest reply, in tokens (lengths are spread up to --max-tokens)."})
    max_tokens: int = field(default=256, metadata={"help": "Longest reply, in tokens."})
    batch_size: int = field(default=4, metadata={"help": "Samples per micro-batch, for both runs."})
    epochs: int = field(default=1, metadata={"help": "Epochs for both runs."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads for both runs (default: all cores)."})
    seed: int = field(default=0, metadata={"help": "Seed of the data and of both runs."})

    def __post_init__(self) -> None:
        problems = [f"{k} must be at least 1, got {getattr(self, k)}" for k in
                    ("num_samples", "num_val", "min_tokens", "max_tokens", "batch_size", "epochs") if getattr(self, k) < 1]
        if self.min_tokens > self.max_tokens:
            problems.append(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be at least 1, got {self.num_threads}")
        if problems:
            raise ConfigError("; ".join(problems))


# -- mapping <-> config -------------------------------------------------------------------------------------
def from_mapping(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build ``cls`` from a YAML/CLI mapping (strings for paths, lists or comma lists for tuples).

    Unknown keys, wrong types and missing required fields are all reported in one :class:`ConfigError`.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [f"{source}: unknown setting '{k}'" for k in values if k not in fields]
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING:
                hint = "" if source == "flags" else f" or '{name}:' in {source}"
                problems.append(f"{name} is required (--{name.replace('_', '-')}{hint})")
            continue
        try:
            kwargs[name] = _coerce(str(f.type), values[name])
        except (TypeError, ValueError) as e:
            problems.append(f"{source}: {name}: {e}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(**kwargs)


def to_mapping(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON values (paths as strings, tuples as lists); inverse of :func:`from_mapping`."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def _coerce(type_name: str, value: Any) -> Any:
    optional = type_name.endswith("| None")
    if value is None:
        if optional:
            return None
        raise TypeError("must not be empty")
    base = type_name.removesuffix("| None").strip()
    if base == "Path":
        if not isinstance(value, (str, Path)):
            raise TypeError(f"expected a path, got {value!r}")
        return Path(value)
    if base.startswith("tuple"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if base == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value
