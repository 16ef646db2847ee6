"""serve/backends/engine_metrics.py: vLLM (current and older names), SGLang and TensorRT-LLM metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.backends.engine_metrics import parse_engine_metrics, parse_prometheus_samples, parse_trtllm_iteration_stats

VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smol"} 3.0
vllm:num_requests_running{engine="1",model_name="smol"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smol"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smol"} 0.25
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="smol"} 1000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="smol"} 250.0
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="smol"} 2.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="smol"} 10.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="smol"} 10.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="smol"} 0.5
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a0,a1",waiting_lora_adapters=""} 1.7e+09
"""

VLLM_V0 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:gpu_prefix_cache_queries counter
vllm:gpu_prefix_cache_queries_total{model_name="m"} 80.0
vllm:gpu_prefix_cache_queries_created{model_name="m"} 1.7e+09
# TYPE vllm:gpu_prefix_cache_hits counter
vllm:gpu_prefix_cache_hits_total{model_name="m"} 20.0
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_count{model_name="m"} 4.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 0.2
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 162.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.007507552643049313
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2826.0
"""


def test_vllm_v1_names() -> None:
    m = parse_engine_metrics(VLLM_V1)
    assert (m.num_running, m.num_waiting, m.kv_cache_usage) == (4, 5, 0.25)
    assert (m.prefix_cache_queries, m.prefix_cache_hits, m.prefix_cache_hit_rate) == (1000.0, 250.0, 0.25)
    assert (m.itl_sum_s, m.itl_count) == (0.5, 10.0)


def test_vllm_older_names() -> None:
    m = parse_engine_metrics(VLLM_V0)
    assert (m.num_running, m.num_waiting, m.kv_cache_usage) == (2, 0, 0.5)
    assert (m.prefix_cache_queries, m.prefix_cache_hits, m.prefix_cache_hit_rate) == (80.0, 20.0, 0.25)
    assert (m.itl_sum_s, m.itl_count) == (0.2, 4.0)


def test_sglang_names() -> None:
    m = parse_engine_metrics(SGLANG)
    assert (m.num_running, m.num_waiting, m.kv_cache_usage) == (162, 2826, 0.28)
    assert m.prefix_cache_hit_rate == pytest.approx(0.0075, abs=1e-4)
    assert m.prefix_cache_queries is None


def test_unknown_page_gives_nones() -> None:
    m = parse_engine_metrics("# nothing here\nprocess_cpu_seconds_total 3.0\n")
    assert m.num_running is None and m.kv_cache_usage is None and m.prefix_cache_hit_rate is None


@pytest.mark.parametrize("text", [VLLM_V1, VLLM_V0, SGLANG])
def test_sample_sums_agree_with_prometheus_client(text) -> None:
    ours = parse_prometheus_samples(text)
    theirs: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            theirs[s.name] = theirs.get(s.name, 0.0) + s.value
    assert ours == pytest.approx(theirs)


def test_reader_handles_spaces_in_labels_timestamps_and_nan() -> None:
    text = 'a{x="1 2}",y="z"} 3 1700000000000\nb 4\nc NaN\nd{} 5\n'
    assert parse_prometheus_samples(text) == {"a": 3.0, "b": 4.0, "d": 5.0}


def test_trtllm_iteration_stats() -> None:
    stats = [{"numActiveRequests": 9, "numQueuedRequests": 9},
             {"iter": 154, "iterLatencyMS": 7.0, "gpuMemUsage": 76665782272, "numActiveRequests": 1,
              "numQueuedRequests": 3, "kvCacheStats": {"allocNewBlocks": 3126, "cacheHitRate": 0.00128,
                                                       "freeNumBlocks": 101253, "maxNumBlocks": 101256,
                                                       "usedNumBlocks": 3, "tokensPerBlock": 32}}]
    m = parse_trtllm_iteration_stats(stats)
    assert (m.num_running, m.num_waiting) == (1, 3)
    assert m.kv_cache_usage == pytest.approx(3 / 101256)
    assert m.prefix_cache_hit_rate == 0.00128
    assert m.extra["iterLatencyMS"] == 7.0
    assert parse_trtllm_iteration_stats([]) is None
