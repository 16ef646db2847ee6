"""Pure parsers of engines' metrics into :class:`EngineMetrics`.

Prometheus text from vLLM (current and older metric names), SGLang and our embedded engine (which uses
vLLM's names), and TensorRT-LLM's JSON iteration stats. Samples with the same name are summed over their
labels (one engine may report per model name or per data-parallel rank).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from serve.backends.base import EngineMetrics

# Sample names in order of preference: the first one present wins. vLLM renamed several metrics in its V1
# engine: gpu_cache_usage_perc -> kv_cache_usage_perc, gpu_prefix_cache_* -> prefix_cache_*, and
# time_per_output_token_seconds (really the inter-token latency) -> inter_token_latency_seconds.
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries",
                  "vllm:gpu_prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits",
               "vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits")
PREFIX_HIT_RATE = ("vllm:gpu_prefix_cache_hit_rate", "sglang:cache_hit_rate")
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds",
       "sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")
_WANTED = frozenset((*RUNNING, *WAITING, *KV_USAGE, *PREFIX_QUERIES, *PREFIX_HITS, *PREFIX_HIT_RATE,
                     *(f"{n}_sum" for n in ITL), *(f"{n}_count" for n in ITL)))


def parse_prometheus_samples(text: str, wanted: frozenset[str] | None = None) -> dict[str, float]:
    """Sum of sample values by sample name, over all label sets, for the names in ``wanted`` (all if None).

    A minimal reader of the exposition format: comment lines are skipped, label values may contain spaces
    and braces, a trailing timestamp is ignored, NaN samples are dropped.
    """
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            rest = line[line.rfind("}") + 1:].split()
        else:
            name, _, tail = line.partition(" ")
            rest = tail.split()
        if not rest or (wanted is not None and name not in wanted):
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        if not math.isnan(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


def _first(samples: Mapping[str, float], names: Sequence[str]) -> float | None:
    for n in names:
        if n in samples:
            return samples[n]
    return None


def _as_int(x: float | None) -> int | None:
    return None if x is None else max(0, int(round(x)))


def parse_engine_metrics(text: str) -> EngineMetrics:
    """:class:`EngineMetrics` from a vLLM, SGLang or lorafleet-engine ``/metrics`` page."""
    s = parse_prometheus_samples(text, _WANTED)
    queries, hits = _first(s, PREFIX_QUERIES), _first(s, PREFIX_HITS)
    rate = _first(s, PREFIX_HIT_RATE)
    if queries is not None and hits is not None:
        rate = hits / queries if queries > 0 else 0.0
    itl_name = next((n for n in ITL if f"{n}_count" in s), None)
    kv = _first(s, KV_USAGE)
    return EngineMetrics(
        num_running=_as_int(_first(s, RUNNING)),
        num_waiting=_as_int(_first(s, WAITING)),
        kv_cache_usage=None if kv is None else min(1.0, max(0.0, kv)),
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_cache_hit_rate=rate,
        itl_sum_s=s.get(f"{itl_name}_sum") if itl_name else None,
        itl_count=s.get(f"{itl_name}_count") if itl_name else None,
    )


def parse_trtllm_iteration_stats(stats: Sequence[Mapping[str, Any]]) -> EngineMetrics | None:
    """:class:`EngineMetrics` from trtllm-serve's ``GET /metrics`` JSON: a list of per-iteration stats
    (``numActiveRequests``, ``numQueuedRequests``, ``kvCacheStats``...), drained by each read. The newest entry
    wins; an empty list (no iteration since the last read) gives None, meaning "no news"."""
    if not stats:
        return None
    last = stats[-1]
    kv = last.get("kvCacheStats") or {}
    usage = None
    max_blocks = kv.get("maxNumBlocks")
    if max_blocks:
        used = kv.get("usedNumBlocks", max_blocks - kv.get("freeNumBlocks", max_blocks))
        usage = min(1.0, max(0.0, used / max_blocks))
    reused, missed = kv.get("reusedBlocks"), kv.get("missedBlocks")
    rate = kv.get("cacheHitRate")
    if rate is None and reused is not None and missed is not None and reused + missed > 0:
        rate = reused / (reused + missed)
    return EngineMetrics(
        num_running=_as_int(last.get("numActiveRequests")),
        num_waiting=_as_int(last.get("numQueuedRequests")),
        kv_cache_usage=usage,
        prefix_cache_hit_rate=rate,
        extra={k: float(last[k]) for k in ("iterLatencyMS", "gpuMemUsage") if isinstance(last.get(k), (int, float))},
    )
