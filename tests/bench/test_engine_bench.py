"""The benchmark's load client against a real server, and its result bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.engine import _summarise
from bench.openai_client import StreamRequest, run_concurrent
from lorafleet.config import EngineBenchConfig
from lorafleet.errors import ConfigError


@pytest.mark.timeout(120)
def test_load_client_measures_real_streams(server):
    reqs = [StreamRequest(server.model, f"Count to ten, take {i}:", 8) for i in range(3)]
    res = run_concurrent(server.base_url, reqs)
    assert len(res.results) == 3
    for r in res.results:
        assert r.output_tokens == 8  # ignore_eos, from stream_options.include_usage
        assert 0 < r.ttft_s <= r.e2e_s
        assert r.tpot_s > 0
    assert res.throughput_tok_s == pytest.approx(24 / res.wall_s)


def test_load_client_reports_http_errors(server):
    with pytest.raises(RuntimeError, match="HTTP 404"):
        run_concurrent(server.base_url, [StreamRequest("no-such-model", "hi", 4)])


def test_config_rejects_non_positive_settings(tmp_path: Path):
    with pytest.raises(ConfigError, match="streams must be positive"):
        EngineBenchConfig(json_path=tmp_path / "x.json", streams=0)


def _fake_run(tok_s: float, tpot: float, ratio: float, lora_tok_s: float) -> dict:
    tp = {"throughput_tok_s": tok_s}
    lora = {"throughput_tok_s": lora_tok_s, "ratio": lora_tok_s / tok_s}
    return {"dtype": "bfloat16", "base": tp, "lora": lora, "lora_server_base": tp,
            "single_stream_tpot_ms": tpot, "prefix": {"ratio": ratio}}


def test_summary_keys_and_targets(tmp_path: Path):
    cfg = EngineBenchConfig(json_path=tmp_path / "x.json")
    engine = _fake_run(500.0, 20.0, 0.1, 420.0)
    vllm = _fake_run(300.0, 40.0, 0.1, 100.0)
    res = _summarise(cfg, engine, {"throughput_tok_s": 200.0, "dtype": "bfloat16"}, vllm)
    assert res["throughput_tok_s"] == {"engine": 500.0, "hf": 200.0, "vllm": 300.0}
    assert res["single_stream_tpot_ms"] == {"engine": 20.0, "vllm": 40.0}
    assert res["multi_lora_ratio"] == pytest.approx(0.84)
    assert res["multi_lora_ratio_vllm"] == pytest.approx(1 / 3)
    assert {"avx2", "avx512f", "avx512_bf16", "model"} <= set(res["cpu"])
    assert all(t["met"] for t in res["targets"].values())
    worse = _summarise(cfg, _fake_run(350.0, 30.0, 0.2, 200.0), None, vllm)
    assert worse["targets"]["throughput_vs_vllm"]["met"] is False  # 350 < 1.3 x 300
    assert worse["targets"]["throughput_vs_hf"]["met"] is None  # not measured
    assert worse["targets"]["tpot_vs_vllm"]["met"] is False
    assert worse["targets"]["prefix_ttft_ratio"]["met"] is False
    assert worse["targets"]["multi_lora_ratio"]["met"] is False
