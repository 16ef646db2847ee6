"""Per-request sampling settings, validated on construction (the server maps the errors to HTTP 400)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lorafleet.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy."""

    max_tokens: int = 16  #: most tokens to generate
    temperature: float = 1.0  #: softmax temperature in [0, 2]; 0 is greedy
    top_p: float = 1.0  #: nucleus mass in (0, 1]
    top_k: int = -1  #: keep the k most likely tokens; -1 (or 0) keeps all
    seed: int | None = None  #: per-request RNG seed; equal seeds give equal samples
    stop: tuple[str, ...] = ()  #: stop strings, excluded from the output
    stop_token_ids: tuple[int, ...] = ()  #: extra token ids that end generation
    ignore_eos: bool = False  #: keep generating past EOS (benchmarks)
    skip_special_tokens: bool = True  #: drop special tokens from the text
    extra: dict = field(default_factory=dict, compare=False)  #: reserved for backend-specific options

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            problems.append(f"top_k must be -1 (disabled) or positive, got {self.top_k}")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
