"""Prometheus metrics of the embedded server, named as vLLM names them so dashboards carry over.

Request-level histograms are observed by the HTTP handlers; engine gauges and counters are read from the
engine's latest stats snapshot at scrape time (no work on the step path).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serve.engine.engine import EngineStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)


class ServerMetrics:
    def __init__(self, model_name: str, stats: Callable[[], EngineStats], block_size: int, num_kv_blocks: int,
                 enable_prefix_caching: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        labels = ["model_name"]
        r = self.registry
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels, registry=r, buckets=TTFT_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", labels, registry=r, buckets=ITL_BUCKETS)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds", "Mean time per output token of a request (TPOT).",
                              labels, registry=r, buckets=ITL_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels, registry=r, buckets=E2E_BUCKETS)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Time from arrival to first scheduling.", labels, registry=r,
                               buckets=E2E_BUCKETS)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests by finish reason.", labels + ["finished_reason"], registry=r)
        self.errors = Counter("lorafleet:request_errors", "Requests answered with an error, by HTTP status.", labels + ["status"], registry=r)
        r.register(_EngineCollector(model_name, stats, block_size, num_kv_blocks, enable_prefix_caching))
        self._children: dict[int, object] = {}

    def labels(self, metric):
        """``metric``'s child for this model; cached, as ``labels()`` takes a lock and builds a key per call."""
        child = self._children.get(id(metric))
        if child is None:
            child = self._children[id(metric)] = metric.labels(model_name=self.model_name)
        return child


class _EngineCollector:
    """Reads the engine's stats snapshot at scrape time."""

    def __init__(self, model_name: str, stats: Callable[[], EngineStats], block_size: int, num_kv_blocks: int,
                 enable_prefix_caching: bool) -> None:
        self.model_name, self.stats = model_name, stats
        self.block_size, self.num_kv_blocks, self.enable_prefix_caching = block_size, num_kv_blocks, enable_prefix_caching

    def describe(self):
        return []

    def collect(self):
        s = self.stats()
        sch, lab = s.scheduler, [self.model_name]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(lab, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(lab, value)
            return c

        yield gauge("vllm:num_requests_running", "Sequences in the running batch.", sch.num_running)
        yield gauge("vllm:num_requests_waiting", "Sequences waiting to be scheduled.", sch.num_waiting + s.num_pending_adapter)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", sch.kv_usage)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", sch.prefix_query_tokens)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", sch.prefix_hit_tokens)
        yield counter("vllm:num_preemptions", "Sequences preempted for lack of KV blocks.", sch.num_preemptions)
        yield counter("lorafleet:computed_prompt_tokens", "Prompt tokens run through the model (prefill work; a prompt "
                      "shared by n choices or served from the prefix cache counts once or not at all).",
                      sch.num_computed_prompt_tokens)
        spec = s.spec_decode
        yield counter("vllm:spec_decode_num_drafts", "Speculative verification steps that carried draft tokens.",
                      spec.num_drafts)
        yield counter("vllm:spec_decode_num_draft_tokens", "Draft tokens proposed (prompt lookup) and verified.",
                      spec.num_draft_tokens)
        yield counter("vllm:spec_decode_num_accepted_tokens", "Draft tokens accepted by the target model.",
                      spec.num_accepted_tokens)
        yield gauge("lorafleet:lora_resident_adapters", "Adapters resident in LoRA slots.", len(s.resident_adapters))
        info = GaugeMetricFamily("vllm:cache_config_info", "KV-cache configuration.",
                                 labels=["block_size", "num_gpu_blocks", "enable_prefix_caching"])
        info.add_metric([str(self.block_size), str(self.num_kv_blocks), str(self.enable_prefix_caching)], 1.0)
        yield info
