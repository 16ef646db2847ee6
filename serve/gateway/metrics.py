"""Prometheus metrics the gateway measures itself, per request, on its own registry.

Latency histograms and token counters carry ``base_model``, ``adapter`` ("" for the base model), ``backend``
(the replica that served, "" if none did) and ``status`` (the HTTP status the client got; for a stream
that failed after it started, the status of the error event). TTFT is measured from the request's arrival
at the gateway to the first generated token leaving it, so gateway queueing and adapter loading count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from serve.gateway.metric_families import FastCounter, FastHistogram

LABELS = ("base_model", "adapter", "backend", "status")
# Buckets from 1 ms: the gateway adds well under a millisecond and fast replicas answer in a few.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 300.0)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class RequestLabels:
    """The label values of one request's samples."""

    base_model: str
    adapter: str  #: "" for the base model
    backend: str  #: "" if no replica was reached
    status: str  #: HTTP status code as text


class GatewayMetrics:
    """All gateway metrics, on a registry owned by one app (no global registry, so tests build many apps)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttft = FastHistogram("gateway:time_to_first_token_seconds", "Arrival at the gateway to the first token sent.",
                                  LABELS, buckets=TTFT_BUCKETS, registry=r)
        self.tpot = FastHistogram("gateway:time_per_output_token_seconds",
                                  "Mean time between output tokens of one request (TPOT), measured at the gateway.",
                                  LABELS, buckets=TPOT_BUCKETS, registry=r)
        self.itl = FastHistogram("gateway:inter_token_latency_seconds", "Time between consecutive streamed token events.",
                                 LABELS, buckets=TPOT_BUCKETS, registry=r)
        self.e2e = FastHistogram("gateway:e2e_request_latency_seconds", "Arrival to the last byte sent.", LABELS,
                                 buckets=E2E_BUCKETS, registry=r)
        self.queue = FastHistogram("gateway:request_queue_time_seconds",
                                   "Arrival until the request is sent to a replica (admission queue, adapter loading).",
                                   LABELS, buckets=QUEUE_BUCKETS, registry=r)
        self.requests = FastCounter("gateway:requests", "Requests answered, by final status.", LABELS, registry=r)
        self.prompt_tokens = FastCounter("gateway:prompt_tokens", "Prompt tokens of answered requests.", LABELS, registry=r)
        self.completion_tokens = FastCounter("gateway:completion_tokens", "Completion tokens of answered requests.", LABELS,
                                             registry=r)
        self.route_decisions = FastCounter("gateway:route_decisions", "Routing decisions by replica and reason.",
                                           ("backend", "reason"), registry=r)
        # Rare events: prometheus_client's own metrics.
        self.retries = Counter("gateway:retries", "Attempts that failed before their first byte and were retried.",
                               ("backend",), registry=r)
        self.adapter_loads = Counter("gateway:adapter_loads", "Adapter load calls to replicas, by result.",
                                     ("backend", "adapter", "result"), registry=r)
        self.adapter_unloads = Counter("gateway:adapter_unloads", "Adapter unload calls to replicas (LRU evictions).",
                                       ("backend", "adapter"), registry=r)
        self.in_flight = Gauge("gateway:requests_in_flight", "Requests the gateway has outstanding on each replica.",
                               ("backend",), registry=r)
        self.queued = Gauge("gateway:requests_queued", "Requests waiting for an admission slot.", registry=r)
        self.healthy = Gauge("gateway:backend_healthy", "1 while the replica passes health checks.", ("backend",),
                             registry=r)
        self._children: dict[tuple, tuple] = {}  # per label values: the request families' children

    def observe_request(self, labels: RequestLabels, *, e2e_s: float, queue_s: float | None, ttft_s: float | None,
                        tpot_s: float | None, prompt_tokens: int, completion_tokens: int, itl_s: Sequence[float] = ()) -> None:
        """Record one finished request (success or not)."""
        values = (labels.base_model, labels.adapter, labels.backend, labels.status)
        children = self._children.get(values)
        if children is None:
            children = self._children[values] = tuple(m.labels(*values) for m in (
                self.requests, self.e2e, self.queue, self.ttft, self.tpot, self.itl, self.prompt_tokens,
                self.completion_tokens))
        requests, e2e, queue, ttft, tpot, itl, prompt, completion = children
        requests.inc()
        e2e.observe(e2e_s)
        if queue_s is not None:
            queue.observe(queue_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if tpot_s is not None:
            tpot.observe(tpot_s)
        for gap in itl_s:
            itl.observe(gap)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
