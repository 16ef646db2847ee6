"""The engine caps oneDNN's and ideep's shape-keyed primitive caches (serve.engine.linear.bound_onednn_caches):
without the cap, every new step size adds an entry of ~0.5-1 MB and a replica's memory grows for hours under
varied traffic (issue #10's soak). Each run is a fresh process, since both caches read their capacity once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lorafleet.config import EngineConfig
from lorafleet.errors import ConfigError
from serve.engine.linear import bound_onednn_caches

ROOT = Path(__file__).resolve().parents[3]

#: steps of many distinct sizes: 4 requests of random lengths interleaved (prefill chunks mixed with decodes)
SCRIPT = textwrap.dedent("""
    import json, os, random, sys
    import psutil
    from lorafleet.config import EngineConfig
    from serve.engine.engine import LLMEngine
    from serve.engine.sampling_params import SamplingParams

    eng = LLMEngine(EngineConfig(model=sys.argv[1], dtype="bfloat16", num_kv_blocks=128, num_threads=1,
                                 onednn_cache_capacity=int(sys.argv[2])))
    rng = random.Random(0)
    def batch(i):
        for j in range(4):
            eng.add_request(f"r{i}-{j}", [rng.randrange(100, 40000) for _ in range(rng.randrange(8, 200))],
                            SamplingParams(max_tokens=rng.randrange(2, 6), temperature=0.0))
            eng.step()
        while eng.has_unfinished:
            eng.step()
    for i in range(5):
        batch(i)
    before = psutil.Process().memory_info().rss
    for i in range(5, 15):
        batch(i)
    print(json.dumps({"growth_mb": (psutil.Process().memory_info().rss - before) / 2**20,
                      "env": [os.environ.get("LRU_CACHE_CAPACITY"), os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")]}))
""")


def _run(model: Path, capacity: int, env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(capacity)], capture_output=True, text=True,
                          cwd=ROOT, env={**clean, **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.soak  # about 40 s of varied shapes, watching RSS
@pytest.mark.skipif(sys.platform != "linux", reason="RSS through psutil, oneDNN on Linux x86 CPUs")
def test_bounded_caches_keep_memory_flat_where_default_ones_grow(base_model_path) -> None:
    capped = _run(base_model_path, 8, {})
    assert capped["env"] == ["8", "8"]
    # the control: the same steps with the libraries' default capacities (an operator's environment wins)
    default = _run(base_model_path, 8, {"LRU_CACHE_CAPACITY": "1024", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"})
    assert default["env"] == ["1024", "1024"]
    assert capped["growth_mb"] < 12, capped
    assert default["growth_mb"] > capped["growth_mb"] + 20, (default, capped)


def test_an_operator_setting_in_the_environment_wins(monkeypatch) -> None:
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "300")
    # set, then removed: monkeypatch records the original either way, so what the call sets is undone afterwards
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "unset")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    bound_onednn_caches(64)
    assert os.environ["LRU_CACHE_CAPACITY"] == "300" and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="onednn_cache_capacity"):
        EngineConfig(model="m", onednn_cache_capacity=0)
