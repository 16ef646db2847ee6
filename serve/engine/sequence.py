"""A sequence: one generation request as the engine tracks it (no torch here)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from serve.engine.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    """Where a sequence is. ``FINISHED_*`` values carry the reason, as OpenAI's ``finish_reason`` needs."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"  # EOS, a stop token id, a stop string or a completed grammar
    FINISHED_LENGTH_CAPPED = "length"  # max_tokens or the context length reached
    FINISHED_ABORTED = "abort"  # cancelled (client went away)

    @property
    def is_finished(self) -> bool:
        return self in (SeqStatus.FINISHED_STOPPED, SeqStatus.FINISHED_LENGTH_CAPPED, SeqStatus.FINISHED_ABORTED)

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.is_finished else None


@dataclass(slots=True)
class SeqTimes:
    """Wall-clock timestamps (``time.monotonic()`` seconds) of a sequence's life, for latency metrics."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None


@dataclass(slots=True, eq=False)
class Sequence:
    """Token state of one choice of a request.

    ``token_ids`` holds prompt then output tokens. ``num_computed_tokens`` counts tokens whose KV is in the
    cache; the next step computes ``token_ids[num_computed_tokens:]`` (or a chunk of it), plus
    ``draft_token_ids`` when the step verifies speculated tokens.

    A request with ``n`` choices is one sequence (choice 0) that computes the prompt, carrying the other
    ``n - 1`` in ``forks``; when its prompt is done they take copies of its block table (shared blocks, see
    :meth:`BlockManager.fork`) and sample their first tokens from the same logits.
    """

    seq_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  #: adapter name, ``None`` for the base model
    adapter_key: int = 0  #: stable integer id of the adapter and cache salt for prefix-cache hashing (0: base)
    lora_slot: int = -1  #: LoRA slot the adapter occupies while the sequence runs (-1: base)
    max_len: int = 0  #: context length cap (prompt + output) for this sequence
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  #: prompt tokens served from the prefix cache at first admission
    block_table: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    num_preemptions: int = 0
    times: SeqTimes = field(default_factory=SeqTimes)
    request_id: str = ""  #: the request this choice belongs to (default: ``seq_id``)
    index: int = 0  #: choice index within the request (OpenAI's ``choices[i].index``)
    forks: list["Sequence"] = field(default_factory=list)  #: choices still waiting for this one's prompt
    draft_token_ids: list[int] = field(default_factory=list)  #: speculated next tokens to verify this step
    guide: Any = None  #: grammar state when decoding is constrained (``serve.engine.structured.Guide``)
    #: token sequences this choice never generates: ``params.bad_words`` tokenized plus ``bad_words_token_ids``
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    #: token ids masked while fewer than ``params.min_tokens`` were generated (EOS unless ignored, stop ids)
    min_tokens_stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        if not self.request_id:
            self.request_id = self.seq_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished
