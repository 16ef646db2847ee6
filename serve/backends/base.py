"""The one extension point for inference engines: :class:`Backend`, async only, plus the dataclasses that
cross it. One subclass per engine kind lives in its own module (vllm, sglang, trtllm, embedded)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lorafleet.config import EngineConfig
from lorafleet.errors import BackendError, ConfigError

BACKEND_KINDS = ("vllm", "sglang", "trtllm", "embedded")


class Endpoint(str, Enum):
    """The OpenAI endpoints the gateway relays, by path."""

    COMPLETIONS = "/v1/completions"
    CHAT = "/v1/chat/completions"
    RESPONSES = "/v1/responses"  #: served by vLLM and our engine; SGLang and TensorRT-LLM are refused (400)

#: backend kinds that serve OpenAI's Responses API
RESPONSES_KINDS = ("vllm", "embedded")


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One engine replica as the operator configured it (YAML ``backends:`` entry or the admin API)."""

    name: str  #: unique id of the replica in the gateway (metric label, admin API key)
    kind: str  #: one of BACKEND_KINDS
    url: str = ""  #: base URL, e.g. http://10.0.0.5:8000 (no /v1); none for an in-process engine
    base_model: str = ""  #: model name clients use for this replica's base model
    served_model: str | None = None  #: the engine's own name for it, if different (vLLM started with a path)
    weight: float = 1.0  #: relative capacity for routing
    max_adapters: int = 4  #: adapters the gateway keeps loaded there at once (LRU-unloaded beyond)
    api_key: str | None = field(default=None, repr=False)  #: bearer token the engine expects (its --api-key), if any
    #: embedded only: directories the engine may load adapters from at runtime (its --allow-runtime-lora); the
    #: gateway fills in its own ``adapter_roots`` when this is empty
    adapter_roots: tuple[str, ...] = ()
    connect_timeout_s: float = 2.0  #: TCP connect timeout of every call
    health_timeout_s: float = 2.0  #: timeout of /health, /metrics and /v1/models calls
    admin_timeout_s: float = 120.0  #: timeout of adapter load/unload calls (loading reads weights from disk)
    #: embedded only: arguments of ``lorafleet serve`` after --host/--port; if set, the gateway launches it
    launch_args: tuple[str, ...] = ()
    #: embedded only: run this engine inside the gateway process (no ``url``; see serve/backends/inprocess.py)
    engine: EngineConfig | None = None
    engine_loop: str = "thread"  #: in-process engine: its step loop on a "thread" of the gateway, or a worker "process"

    def __post_init__(self) -> None:
        problems = []
        if not self.name or "/" in self.name:
            problems.append(f"backend name must be non-empty without '/', got '{self.name}'")
        if self.kind not in BACKEND_KINDS:
            problems.append(f"backend '{self.name}': kind must be one of {BACKEND_KINDS}, got '{self.kind}'")
        if self.engine is not None:
            if self.url or self.launch_args or self.kind != "embedded":
                problems.append(f"backend '{self.name}': an in-process engine is only for kind 'embedded', without url "
                                "or launch_args")
        elif not self.url.startswith(("http://", "https://")):
            problems.append(f"backend '{self.name}': url must start with http:// or https://, got '{self.url}'")
        if self.engine_loop not in ("thread", "process"):
            problems.append(f"backend '{self.name}': engine_loop must be 'thread' or 'process', got '{self.engine_loop}'")
        if not self.base_model:
            problems.append(f"backend '{self.name}': base_model must be set")
        if self.weight <= 0:
            problems.append(f"backend '{self.name}': weight must be positive, got {self.weight}")
        if self.max_adapters < 0:
            problems.append(f"backend '{self.name}': max_adapters must be >= 0, got {self.max_adapters}")
        if min(self.connect_timeout_s, self.health_timeout_s, self.admin_timeout_s) <= 0:
            problems.append(f"backend '{self.name}': timeouts must be positive")
        if self.launch_args and self.kind != "embedded":
            problems.append(f"backend '{self.name}': launch_args are only for kind 'embedded'")
        if self.adapter_roots and self.kind != "embedded":
            problems.append(f"backend '{self.name}': adapter_roots are only for kind 'embedded'")
        if problems:
            raise ConfigError("; ".join(problems))

    @staticmethod
    def converted(data: Mapping[str, Any]) -> dict[str, Any]:
        """The values of a YAML/JSON entry that need converting: ``launch_args`` to a tuple, an ``engine``
        mapping to an :class:`EngineConfig`. Raises ConfigError naming the backend."""
        out: dict[str, Any] = {}
        if "launch_args" in data:
            out["launch_args"] = tuple(data["launch_args"] or ())
        if "adapter_roots" in data:
            out["adapter_roots"] = tuple(str(r) for r in data["adapter_roots"] or ())
        if isinstance(data.get("engine"), Mapping):
            try:
                out["engine"] = EngineConfig(**data["engine"])
            except (ConfigError, TypeError) as e:
                raise ConfigError(f"backend '{data.get('name')}': engine: {e}") from None
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BackendSpec:
        """A spec from a YAML/JSON entry (see :meth:`converted`); TypeError for unknown keys."""
        return cls(**{**data, **cls.converted(data)})

    @property
    def upstream_model(self) -> str:
        """The base model's name in requests to the engine."""
        return self.served_model or self.base_model


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One OpenAI request on its way to a replica."""

    endpoint: Endpoint
    body: Mapping[str, Any]  #: the client's OpenAI JSON; the backend replaces ``model`` with its own naming
    adapter: str | None  #: adapter to apply, None for the base model
    timeout_s: float  #: read timeout: the longest wait for the response or for the next streamed event
    request_id: str = ""  #: gateway request id, forwarded as X-Request-Id
    #: the JSON text of ``body`` as the client sent it, if ``body`` is unchanged: relayed as is when the
    #: backend needs no change either (no re-serialisation on the hot path)
    raw_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A complete (non-streaming) upstream response: any status the engine answered with, and its JSON."""

    status: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ServedModels:
    """What a replica reports serving."""

    base_models: tuple[str, ...]  #: engine-side names of base models
    adapters: tuple[str, ...]  #: loaded adapters


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """Load and cache signals scraped from a replica; a field is None when the engine does not report it."""

    num_running: int | None = None  #: requests being decoded/prefilled now
    num_waiting: int | None = None  #: requests queued in the engine
    kv_cache_usage: float | None = None  #: fraction of KV cache in use, [0, 1]
    prefix_cache_queries: float | None = None  #: cumulative tokens looked up in the prefix cache
    prefix_cache_hits: float | None = None  #: cumulative tokens found there
    prefix_cache_hit_rate: float | None = None  #: hits / queries (or the engine's own ratio gauge)
    itl_sum_s: float | None = None  #: sum of the engine's inter-token latency histogram, seconds
    itl_count: float | None = None  #: its count
    extra: Mapping[str, float] = field(default_factory=dict)  #: other engine-specific numbers worth logging


class UpstreamError(BackendError):
    """The engine answered with an HTTP error. ``status`` and ``body`` are its answer; 5xx are retryable."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, retryable=status >= 500)
        self.status = status
        self.body = dict(body or {})

    @property
    def param(self) -> str | None:
        """The field the engine's OpenAI error body names, so a 400 keeps naming it through the gateway."""
        err = self.body.get("error")
        return str(err["param"]) if isinstance(err, Mapping) and err.get("param") is not None else None


class Backend(ABC):
    """An engine replica reached over its HTTP API. Every method is a coroutine (or async iterator).

    Failures raise :class:`BackendError`: ``retryable`` means another replica may well succeed (connection
    refused, reset, timeout, 5xx); :class:`UpstreamError` carries an HTTP status the engine answered with.
    """

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec

    async def start(self) -> None:
        """Prepare for use (open connections, launch a managed process). Default: nothing to do."""

    async def aclose(self) -> None:
        """Release connections and anything :meth:`start` launched."""

    @abstractmethod
    async def generate(self, req: UpstreamRequest) -> UpstreamResponse:
        """Run a non-streaming request; 4xx answers are returned, connection failures and 5xx raised."""

    @abstractmethod
    def stream_batches(self, req: UpstreamRequest) -> AsyncIterator[list[bytes]]:
        """Run a streaming request and yield SSE event data payloads (the JSON chunk, or ``b"[DONE]"``) as they
        arrive, as lists: every event that one read from the engine completed, so a relay can pass them on
        in one write without waiting for anything. ``[DONE]`` is the last payload; the iterator ends once the
        response is over. Before the first payload, failures raise as :meth:`generate`'s do; after it, a
        broken stream raises :class:`BackendError` with ``retryable=False``. Closing the iterator aborts the
        request."""

    async def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        """:meth:`stream_batches`, one payload at a time."""
        batches = self.stream_batches(req)
        try:
            async for batch in batches:
                for payload in batch:
                    yield payload
        finally:
            await batches.aclose()

    @abstractmethod
    async def health(self) -> bool:
        """Whether the replica answers its health check in time."""

    @abstractmethod
    async def load_adapter(self, name: str, path: Path) -> None:
        """Make adapter ``name`` (PEFT directory ``path``, as the replica sees it) usable; idempotent."""

    @abstractmethod
    async def unload_adapter(self, name: str) -> None:
        """Unload adapter ``name``; succeeds if it was not loaded."""

    @abstractmethod
    async def list_models(self) -> ServedModels:
        """Base models and adapters the replica reports."""

    @abstractmethod
    async def scrape_metrics(self) -> EngineMetrics | None:
        """Current load and cache metrics, or None if the replica does not answer."""
