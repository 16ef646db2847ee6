"""Operator profiles and the memory planner's settings (issue #8). Stdlib only.

A :class:`Profile` holds engine-neutral serving settings; ``lorafleet profile render`` turns one into the
launch command of vLLM, SGLang, TensorRT-LLM or our engine. A :class:`PlanConfig` is the input of
``lorafleet profile plan``. Sizes are bytes (``*_bytes``) unless the name says GiB; ``parse_bytes`` reads
"80GiB"-style text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorafleet.errors import ConfigError

GiB = 1 << 30
BACKENDS = ("vllm", "sglang", "trtllm", "embedded")
KV_DTYPES = ("auto", "bfloat16", "float16", "float32", "fp8")
WEIGHT_DTYPES = ("auto", "bfloat16", "float16", "float32", "fp8", "int8", "int4")
MODEL_DTYPES = ("auto", "bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
                  "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "float8": "fp8"}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def normalize_dtype(name: str) -> str:
    """``bf16`` → ``bfloat16``, ``fp8_e4m3`` → ``fp8`` and so on; other names are returned lower-cased."""
    low = str(name).strip().lower()
    return _DTYPE_ALIASES.get(low, low)


def parse_bytes(text: str | int | float) -> int:
    """A size such as ``80GiB``, ``16GB`` (decimal), ``512MiB`` or a plain byte count, as bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    m = _SIZE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"not a size: '{text}' (use e.g. 80GiB, 16GB, 512MiB or a byte count)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _check_positive(obj: Any, names: tuple[str, ...], problems: list[str]) -> None:
    for n in names:
        v = getattr(obj, n)
        if v is not None and v < 1:
            problems.append(f"{n} must be positive, got {v}")


def _check_fields(obj: Any, problems: list[str], choices: dict[str, tuple[str, ...]], non_negative: tuple[str, ...]) -> None:
    problems += [f"{n} must be one of {c}, got '{getattr(obj, n)}'" for n, c in choices.items() if getattr(obj, n) not in c]
    problems += [f"{n} must be >= 0, got {getattr(obj, n)}" for n in non_negative if getattr(obj, n) < 0]
    if not 0 < obj.gpu_memory_utilization <= 1:
        problems.append(f"gpu_memory_utilization must be in (0, 1], got {obj.gpu_memory_utilization}")


@dataclass(frozen=True, slots=True)
class Profile:
    """Engine-neutral serving settings; every field is a key of a profile YAML file."""

    name: str = field(metadata={"help": "Profile name (shown in reports and sweeps)."})
    description: str = field(default="", metadata={"help": "What the profile is for."})
    max_num_seqs: int = field(default=64, metadata={"help": "Most sequences running in one batch."})
    max_num_batched_tokens: int = field(
        default=2048, metadata={"help": "Token budget of one engine step (prefill chunk + decodes)."})
    max_model_len: int | None = field(default=None, metadata={"help": "Context length; None keeps the model's."})
    kv_cache_dtype: str = field(default="auto", metadata={"help": f"KV-cache dtype, one of {KV_DTYPES}."})
    dtype: str = field(default="auto", metadata={"help": f"Weight/activation dtype, one of {MODEL_DTYPES}."})
    enable_prefix_caching: bool = field(default=True, metadata={"help": "Reuse KV blocks of shared prompt prefixes."})
    enable_chunked_prefill: bool = field(default=True, metadata={"help": "Split long prefills across steps."})
    max_loras: int = field(default=0, metadata={"help": "Adapters resident at once; 0 turns LoRA off."})
    max_lora_rank: int = field(default=16, metadata={"help": "Largest adapter rank served."})
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "Fraction of GPU memory the engine may use (weights + KV + activations)."})
    kv_cache_gib: float | None = field(
        default=None, metadata={"help": "Explicit KV-cache size in GiB for CPU engines (vLLM-CPU, our engine)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs one replica is sharded over."})

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.name or not re.match(r"^[A-Za-z0-9._-]+$", self.name):
            problems.append(f"name must be non-empty letters, digits, '.', '_' or '-', got '{self.name}'")
        _check_positive(self, ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_lora_rank",
                               "tensor_parallel_size"), problems)
        _check_fields(self, problems, {"kv_cache_dtype": KV_DTYPES, "dtype": MODEL_DTYPES}, ("max_loras",))
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            problems.append(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM refuses this too: every running sequence must be able to decode one token per step.
            problems.append(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                            f"({self.max_num_seqs})")
        if (not self.enable_chunked_prefill and self.max_model_len is not None
                and self.max_num_batched_tokens < self.max_model_len):
            problems.append(f"without chunked prefill a whole prompt is one step: max_num_batched_tokens "
                            f"({self.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})")
        if problems:
            raise ConfigError(f"profile '{self.name}': " + "; ".join(problems))


def profile_from_mapping(raw: Any, where: str = "profile") -> Profile:
    """A :class:`Profile` from parsed YAML; unknown keys, wrong types and bad values are reported together."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    problems = [f"unknown key '{k}' (known: {', '.join(fields)})" for k in raw if k not in fields]
    values = dict(raw)
    for key in ("kv_cache_dtype", "dtype"):
        if isinstance(values.get(key), str):
            values[key] = normalize_dtype(values[key])
    for name, value in values.items():
        kind = str(fields[name].type) if name in fields else ""
        if value is None or not kind:
            continue
        if "bool" in kind and not isinstance(value, bool):
            problems.append(f"{name}: expected true/false, got {value!r}")
        elif ("int" in kind or "float" in kind) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{name}: expected a number, got {value!r}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    try:
        return Profile(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def profile_to_mapping(profile: Profile) -> dict[str, Any]:
    """The YAML-ready mapping of ``profile`` (the inverse of :func:`profile_from_mapping`)."""
    return {f.name: getattr(profile, f.name) for f in dataclasses.fields(Profile)}


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """Input of the memory planner; every field is a flag of ``lorafleet profile plan``."""

    model: str = field(metadata={"help": "HF checkpoint directory, its config.json, or a provisioned model name."})
    gpu_mem_bytes: int = field(metadata={"help": "Memory of one GPU, e.g. 80GiB."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "Fraction of GPU memory the engine may use."})
    weight_dtype: str = field(
        default="auto", metadata={"help": f"Weight storage, one of {WEIGHT_DTYPES}; auto reads config.json."})
    kv_dtype: str = field(default="auto", metadata={"help": f"KV-cache dtype, one of {KV_DTYPES}; auto = activation dtype."})
    max_model_len: int | None = field(default=None, metadata={"help": "Context length; default: the model's."})
    lora_slots: int = field(default=0, metadata={"help": "Adapters resident at once (GPU slots)."})
    lora_rank: int = field(default=16, metadata={"help": "Max LoRA rank the slots are sized for."})
    max_num_seqs: int | None = field(
        default=None, metadata={"help": "Fix max_num_seqs instead of recommending it (also sizes the logits reserve)."})
    max_num_batched_tokens: int | None = field(
        default=None, metadata={"help": "Fix the step token budget instead of recommending it."})
    avg_seq_len: int | None = field(
        default=None, metadata={"help": "Typical prompt+output tokens of a request; default: half of max_model_len."})
    runtime_reserve_bytes: int = field(
        default=GiB, metadata={"help": "Non-torch memory kept free (CUDA context, allocator slack, graphs), e.g. 1GiB."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs the model is sharded over."})
    block_size: int = field(default=16, metadata={"help": "Tokens per KV block; capacity is rounded down to blocks."})
    enable_chunked_prefill: bool = field(default=True, metadata={"help": "Plan for chunked prefill."})

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.gpu_mem_bytes < 1:
            problems.append(f"gpu_mem must be positive, got {self.gpu_mem_bytes}")
        _check_fields(self, problems, {"weight_dtype": WEIGHT_DTYPES, "kv_dtype": KV_DTYPES},
                      ("lora_slots", "runtime_reserve_bytes"))
        _check_positive(self, ("max_model_len", "lora_rank", "max_num_seqs", "max_num_batched_tokens", "avg_seq_len",
                               "tensor_parallel_size", "block_size"), problems)
        if problems:
            raise ConfigError("; ".join(problems))
