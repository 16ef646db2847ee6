"""Engine backends of the gateway: one :class:`Backend` subclass per engine kind, chosen by ``BackendSpec.kind``.

Each module holds one kind; none imports an engine, they all speak HTTP.
"""

from __future__ import annotations

from serve.backends.base import (BACKEND_KINDS, Backend, BackendSpec, Endpoint, EngineMetrics, ServedModels,
                                 UpstreamError, UpstreamRequest, UpstreamResponse)
from serve.backends.embedded import EmbeddedBackend
from serve.backends.sglang import SGLangBackend
from serve.backends.trtllm import TRTLLMBackend
from serve.backends.vllm import VLLMBackend

BACKENDS: dict[str, type[Backend]] = {
    "vllm": VLLMBackend,
    "sglang": SGLangBackend,
    "trtllm": TRTLLMBackend,
    "embedded": EmbeddedBackend,
}
assert set(BACKENDS) == set(BACKEND_KINDS)


def make_backend(spec: BackendSpec) -> Backend:
    """The backend for ``spec.kind``, not yet started."""
    return BACKENDS[spec.kind](spec)


__all__ = ["BACKENDS", "BACKEND_KINDS", "Backend", "BackendSpec", "Endpoint", "EngineMetrics", "ServedModels",
           "UpstreamError", "UpstreamRequest", "UpstreamResponse", "make_backend"]
