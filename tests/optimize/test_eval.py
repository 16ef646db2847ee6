"""lorafleet eval ppl / compare on one held-out passage: backends agree, and compare reports every figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.config.optimize import EvalConfig
from optimize.textdata import HELDOUT, read_passages

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def passage(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "one.txt"
    path.write_text(read_passages(None, HELDOUT)[2])  # the photosynthesis passage, ~200 tokens
    return path


@pytest.mark.slow  # full tier: ~6 s; test_kv_quant's fp32 scoring equals HF in the fast tier
def test_hf_and_engine_perplexities_agree(base_model_path, passage) -> None:
    from optimize.ppl import evaluate

    hf = evaluate(str(base_model_path), EvalConfig(data=passage, backend="hf", window_tokens=128))
    eng = evaluate(str(base_model_path), EvalConfig(data=passage, backend="engine", window_tokens=128, num_threads=1))
    assert hf.num_windows == eng.num_windows >= 2 and hf.num_tokens == eng.num_tokens
    assert eng.ppl == pytest.approx(hf.ppl, rel=1e-4)  # fp32 on both sides
    assert hf.argmax_ids == eng.argmax_ids
    assert 2 < hf.ppl < 100 and eng.extra["kv_bytes_per_token"] == 46080  # fp32 KV of SmolLM2


def test_compare_cli_reports_every_figure(base_model_path, passage, optimize_work) -> None:
    from optimize.quantize import run
    from lorafleet.config.optimize import QuantConfig

    q = run(QuantConfig(model=str(base_model_path), out=optimize_work / "int8e", scheme="int8-engine"))
    out = optimize_work / "cmp.json"
    r = subprocess.run([sys.executable, "-m", "lorafleet.cli", "eval", "compare", str(base_model_path), q["path"], "--data",
                        str(passage), "--window-tokens", "128", "--decode-tokens", "8", "--num-threads", "1", "--json",
                        str(out)], capture_output=True, text=True, timeout=1100)
    assert r.returncode == 0, r.stderr[-2000:]
    cmp = json.loads(out.read_text())
    assert cmp["a"]["backend"] == "hf" and cmp["b"]["backend"] == "engine"  # auto: int8-engine runs on our engine
    assert abs(cmp["ppl_delta_pct"]) < 2 and cmp["greedy_agreement"] > 0.9
    assert cmp["ppl_delta_pct"] == pytest.approx(100 * (cmp["b"]["ppl"] / cmp["a"]["ppl"] - 1))
    assert 0.35 < cmp["size_ratio"] < 0.45  # int8 decoder linears, fp32 embedding and norms, vs all fp32
    assert cmp["a"]["decode_tpot_ms"] > 0 and cmp["b"]["decode_tpot_ms"] > 0 and cmp["decode_speedup"] > 0
    assert math.isfinite(cmp["b"]["ppl"]) and "ppl delta %" in r.stdout
