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
STRUCTURED_KINDS = ("json_object", "json_schema", "regex", "choice", "grammar", "structural_tag")


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A grammar the output must follow: any JSON object, JSON valid under a schema, a regex, one of a list
    of strings, an EBNF (GBNF) or Lark grammar, or an xgrammar structural tag.

    ``schema`` is the grammar's source text: the JSON Schema as compact JSON text (so equal schemas hash
    equally and share one compiled grammar, see :mod:`serve.engine.structured`; keys keep their order, and
    the grammar generates properties in the order the schema lists them), the regex, the choices as a JSON
    list, the grammar text, or the structural tag as JSON.
    """

    kind: str  #: one of STRUCTURED_KINDS
    schema: str = ""  #: the grammar's source text ("" for json_object)

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ConfigError(f"response_format type must be one of {STRUCTURED_KINDS}, got '{self.kind}'")
        if self.kind != "json_object" and not self.schema:
            raise ConfigError(f"a {self.kind} structured output needs its {'schema' if 'json' in self.kind else 'text'}")

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
    stop: tuple[str, ...] = ()  #: stop strings, excluded from the output (unless include_stop_str_in_output)
    include_stop_str_in_output: bool = False  #: vLLM's: keep the stop string that ended the output
    stop_token_ids: tuple[int, ...] = ()  #: extra token ids that end generation
    ignore_eos: bool = False  #: keep generating past EOS (benchmarks)
    skip_special_tokens: bool = True  #: drop special tokens from the text
    n: int = 1  #: choices generated from one prompt; they share the prompt's KV blocks
    #: log-probabilities to return per generated token: None for none, k >= 0 for the chosen token plus the k
    #: most likely ones (raw: log-softmax of the model's logits before any sampling transform or grammar mask)
    logprobs: int | None = None
    #: log-probabilities of the prompt's tokens (from the prefill): None for none, k >= 0 for each prompt token
    #: (after the first) plus its k most likely alternatives. Such requests skip the prefix cache (see
    #: docs/features.md): every prompt row must be computed to have logits.
    prompt_logprobs: int | None = None
    structured: StructuredOutput | None = None  #: grammar the output must follow (constrained decoding)
    #: n-gram speculative decoding: draft tokens per step (0 off); None takes the engine's default
    num_speculative_tokens: int | None = None
    #: OpenAI presence penalty in [-2, 2]: subtracted once from the logit of every token already in the output
    presence_penalty: float = 0.0
    #: OpenAI frequency penalty in [-2, 2]: subtracted from a token's logit once per occurrence in the output
    frequency_penalty: float = 0.0
    #: vLLM/HF repetition penalty > 0 (1 off): logits of tokens in the prompt or output are divided by it when
    #: positive, multiplied by it otherwise
    repetition_penalty: float = 1.0
    #: drop tokens whose probability (after temperature) is below min_p × the top token's, in [0, 1]
    min_p: float = 0.0
    #: (token id, bias in [-100, 100]) pairs added to the logits before sampling
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: words never generated: the engine tokenizes each (with and without a leading space, as vLLM does)
    bad_words: tuple[str, ...] = ()
    #: token sequences never generated (the last token is banned after the others), on top of ``bad_words``
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    #: EOS and stop token ids are masked until this many tokens were generated (at most ``max_tokens``)
    min_tokens: int = 0
    #: vLLM's cache_salt: only requests with the same salt (and adapter) share prefix-cache blocks
    cache_salt: str | None = None
    #: vLLM's allowed_token_ids: when non-empty, only these tokens may be generated
    allowed_token_ids: tuple[int, ...] = ()
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
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.prompt_logprobs}")
        if self.num_speculative_tokens is not None and not 0 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS:
            problems.append(f"num_speculative_tokens must be in [0, {MAX_SPECULATIVE_TOKENS}], "
                            f"got {self.num_speculative_tokens}")
        problems += self._adjust_problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def _adjust_problems(self) -> list[str]:
        problems = []
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                problems.append(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not self.repetition_penalty > 0.0 or self.repetition_penalty == float("inf"):
            problems.append(f"repetition_penalty must be a positive number, got {self.repetition_penalty}")
        if not 0.0 <= self.min_p <= 1.0:
            problems.append(f"min_p must be in [0, 1], got {self.min_p}")
        bad_bias = next(((t, b) for t, b in self.logit_bias if not -100.0 <= b <= 100.0 or t < 0), None)
        if bad_bias is not None:
            problems.append(f"logit_bias values must be in [-100, 100] for token ids >= 0, got {bad_bias[1]} for "
                            f"token {bad_bias[0]}")
        if any(not w.strip() for w in self.bad_words) or any(not w for w in self.bad_words_token_ids):
            problems.append("bad_words must be non-empty")
        if self.cache_salt is not None and not self.cache_salt:
            problems.append("cache_salt must be a non-empty string")
        if not 0 <= self.min_tokens <= self.max_tokens:
            problems.append(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        return problems

    @property
    def is_penalized(self) -> bool:
        """Whether a presence, frequency or repetition penalty is set."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def has_logits_adjust(self) -> bool:
        """Whether anything changes the logits before sampling (penalties, bias, bans, min_tokens, allowed ids)."""
        return bool(self.is_penalized or self.logit_bias or self.bad_words or self.bad_words_token_ids
                    or self.min_tokens or self.allowed_token_ids)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
