"""bench/optimize.py: the headline keys of "done when" 4, target checks, and the committed results file."""

from __future__ import annotations

import json
from pathlib import Path

from bench.optimize import KEYS, TARGETS, check_targets, split_keys

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "optimize.json"


def details() -> dict:
    q = {s: {"ppl": 10.0, "ppl_delta_pct": d, "bytes": 1, "load_vllm": v, "linear_share_of_bf16": 0.3, "backend": "hf"}
         for s, d, v in (("int8", 0.5, None), ("nf4", 9.0, None), ("int8-engine", 0.1, None), ("w4a16", 13.0, True),
                         ("w8a8", 1.0, False))}
    kv = {"bfloat16": {"ppl": 10.0}, "int8": {"ppl_delta_pct": 0.4, "capacity_ratio": 2.0},
          "fp8": {"ppl_delta_pct": 1.0, "capacity_ratio": 2.0, "vllm_capacity_ratio": 2.0, "load_vllm": True}}
    prune = {k: {"ppl_delta_pct": 10.0, "speedup": s, "params": 100, "load_vllm": True} for k, s in (("depth", 1.25), ("width", 1.05))}
    return {"quantize": q, "kv": kv, "prune": prune}


def test_headline_entries_have_exactly_the_issue_keys() -> None:
    head = split_keys(details())
    assert set(head["quantize"]) == {"int8", "nf4", "int8-engine", "w4a16", "w8a8"}
    assert set(head["kv"]) == {"int8", "fp8"} and set(head["prune"]) == {"depth", "width"}
    for section, keys in KEYS.items():
        assert all(tuple(entry) == keys for entry in head[section].values())
    assert head["quantize"]["w4a16"] == {"ppl": 10.0, "ppl_delta_pct": 13.0, "bytes": 1, "load_vllm": True}


def test_targets_are_checked_against_the_issue_bounds() -> None:
    results = {**split_keys(details()), "details": details()}
    t = check_targets(results)
    assert set(t) == set(TARGETS)
    assert t["w4a16 ppl within +12%"] == {"value": 13.0, "target": "<= 12.0", "met": False}
    assert t["nf4 ppl within +10%"]["met"] is True and t["depth prune decode >= 1.2x"]["met"] is True
    assert t["w8a8 served by vLLM"]["met"] is False and t["w4a16 served by vLLM"]["met"] is True
    del results["details"]["kv"]["fp8"]["vllm_capacity_ratio"]
    assert check_targets(results)["vLLM fp8 KV ~2x bf16 tokens"]["met"] is None  # not measured is not "met"


def test_committed_results_come_from_a_real_run() -> None:
    data = json.loads(RESULTS.read_text())
    assert split_keys(data["details"]) == {k: data[k] for k in KEYS}
    assert data["base"]["ppl"] > 1 and data["cpu"]["cores"] >= 1  # (seconds counts only the last, resumed process)
    assert data["details"]["kv"]["int8"]["kv_bytes_per_token"] == 11520 and data["details"]["kv"]["bfloat16"]["ppl"] > 1
    for section, keys in KEYS.items():
        for name, entry in data[section].items():
            assert tuple(entry) == keys, (section, name)
    assert data["kv"]["int8"]["capacity_ratio"] == data["kv"]["fp8"]["capacity_ratio"] == 2.0
    assert data["targets"] == check_targets(data)
    assert data["targets"]["nf4 ppl within +10%"]["met"] and data["targets"]["nf4 linear bytes <= 35% of bf16"]["met"]
