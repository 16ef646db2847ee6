"""Settings of ``lorafleet bench spec`` (prompt-lookup speculative decoding, on vs off). Stdlib only; every
field is a flag of the command (``opt(cls, field)`` reads the default and help text from here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import ConfigError

#: the issue's target: single-stream TPOT with speculation at most this share of TPOT without
SPEC_TPOT_TARGET_RATIO = 0.67


@dataclass(frozen=True, slots=True)
class SpecBenchConfig:
    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model name or checkpoint dir."})
    dtype: str = field(default="bfloat16", metadata={"help": "Engine dtype (the serving default)."})
    output_tokens: int = field(default=128, metadata={"help": "Output tokens per request (single stream, ignore_eos)."})
    num_prompts: int = field(default=4, metadata={"help": "Input-grounded prompts (rewrite/extract a passage), 1 to 8."})
    repeats: int = field(default=3, metadata={"help": "Off/on measurement pairs per prompt (median reported)."})
    num_speculative_tokens: int = field(default=8, metadata={"help": "Draft tokens per step when speculation is on."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads of the server (default: all cores)."})
    engine_args: tuple[str, ...] = field(default=(), metadata={"help": "Extra flags for `lorafleet serve`."})

    def __post_init__(self) -> None:
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in ("output_tokens", "repeats")
                    if getattr(self, k) < 1]
        if not 1 <= self.num_prompts <= 8:
            problems.append(f"num_prompts must be in [1, 8], got {self.num_prompts}")
        if not 1 <= self.num_speculative_tokens <= 16:
            problems.append(f"num_speculative_tokens must be in [1, 16], got {self.num_speculative_tokens}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"dtype must be float32, bfloat16 or float16, got '{self.dtype}'")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be positive, got {self.num_threads}")
        if problems:
            raise ConfigError("; ".join(problems))
