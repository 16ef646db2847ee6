"""Per-request sampling settings, validated on construction (the server maps the errors to HTTP 400)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lorafleet.errors import ConfigError

#: most ``top_logprobs`` a request may ask for (OpenAI's limit for chat; vLLM's default ``max_logprobs``)
MAX_TOP_LOGPROBS = 20
#: most choices per prompt
MAX_N = 16
#: most draft tokens a request may ask to speculate per step
MAX_SPECULATIVE_TOKENS = 16
STRUCTURED_KINDS = ("json_object", "json_schema")


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A grammar the output must follow: any JSON object, or JSON valid under ``schema``.

    ``schema`` is the JSON Schema as compact JSON text, so equal schemas hash equally and share one compiled
    grammar (see :mod:`serve.engine.structured`). Keys keep their order: the grammar generates properties in
    the order the schema lists them.
    """

    kind: str  #: "json_object" or "json_schema"
    schema: str = ""  #: compact JSON text of the schema ("" for json_object)

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ConfigError(f"response_format type must be one of {STRUCTURED_KINDS}, got '{self.kind}'")
        if self.kind == "json_schema" and not self.schema:
            raise ConfigError("a json_schema response_format needs a schema")

    @classmethod
    def json_schema(cls, schema: dict | bool) -> "StructuredOutput":
        """From a parsed JSON Schema (serialized compactly here)."""
        return cls("json_schema", json.dumps(schema, separators=(",", ":"), ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy."""

    max_tokens: int = 16  #: most tokens to generate
    temperature: float = 1.0  #: softmax temperature in [0, 2]; 0 is greedy
    top_p: float = 1.0  #: nucleus mass in (0, 1]
    top_k: int = -1  #: keep the k most likely tokens; -1 (or 0) keeps all
    seed: int | None = None  #: per-request RNG seed; equal seeds give equal samples (choice i of n uses seed + i)
    stop: tuple[str, ...] = ()  #: stop strings, excluded from the output
    stop_token_ids: tuple[int, ...] = ()  #: extra token ids that end generation
    ignore_eos: bool = False  #: keep generating past EOS (benchmarks)
    skip_special_tokens: bool = True  #: drop special tokens from the text
    n: int = 1  #: choices generated from one prompt; they share the prompt's KV blocks
    #: log-probabilities to return per generated token: None for none, k >= 0 for the chosen token plus the k
    #: most likely ones (raw: log-softmax of the model's logits before any sampling transform or grammar mask)
    logprobs: int | None = None
    structured: StructuredOutput | None = None  #: grammar the output must follow (constrained decoding)
    #: n-gram speculative decoding: draft tokens per step (0 off); None takes the engine's default
    num_speculative_tokens: int | None = None
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
        if not 1 <= self.n <= MAX_N:
            problems.append(f"n must be in [1, {MAX_N}], got {self.n}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")
        if self.num_speculative_tokens is not None and not 0 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS:
            problems.append(f"num_speculative_tokens must be in [0, {MAX_SPECULATIVE_TOKENS}], "
                            f"got {self.num_speculative_tokens}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
