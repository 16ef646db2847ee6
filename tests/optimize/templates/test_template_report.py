"""report: the block-cache model (engine rules: chained full blocks, never the last token, LRU capacity) and
the estimate on the example requests before and after compiling, with the real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.config.templates import TemplateReportConfig
from lorafleet.errors import ConfigError
from optimize.templates.commands import run_report
from optimize.templates.report import BlockCache, read_requests, simulate

EXAMPLES = Path(__file__).resolve().parents[3] / "optimize" / "templates" / "examples"


def test_block_cache_follows_the_engine_rules() -> None:
    cache = BlockCache(block_size=4)
    a = list(range(10))  # 2 full blocks + 2 tokens
    assert cache.serve(a) == 0
    assert cache.serve(a) == 8  # both full blocks again
    assert cache.serve(list(range(8))) == 4  # an exact 2-block prompt reuses 1: its last token is computed
    assert cache.serve([0, 1, 2, 3, 9, 9, 9, 9, 9]) == 4  # diverges in block 2
    assert cache.serve([7] + a[1:]) == 0  # chained: a different first block breaks everything after it


def test_capacity_evicts_least_recently_used_blocks() -> None:
    stats = simulate([[1] * 8, [2] * 8 + [0], [1] * 8 + [0]], block_size=4, capacity_blocks=2)
    assert stats.num_hit_tokens == 0  # [1]*8's blocks were evicted by [2]*8's
    stats = simulate([[1] * 8 + [0], [2] * 4 + [0], [1] * 8 + [0]], block_size=4, capacity_blocks=3)
    assert (stats.num_hit_tokens, stats.num_prompt_tokens, stats.num_requests) == (8, 23, 3)
    assert stats.hit_rate == pytest.approx(8 / 23)
    with pytest.raises(ConfigError):
        BlockCache(0)


def test_read_requests_accepts_gateway_bodies_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "r.jsonl"
    good.write_text('{"template": "a", "variables": {"q": 1}}\n\n'
                    '{"model": "m", "messages": [], "prompt_template": {"name": "b", "variables": {}}}\n')
    assert [(r.template, r.line) for r in read_requests(good)] == [("a", 1), ("b", 3)]
    good.write_text('{"template": "a"}\n{"variables": {}}\n')
    with pytest.raises(ConfigError, match=r"r.jsonl:2: expected"):
        read_requests(good)


def test_report_estimates_before_and_after(tmp_path: Path) -> None:
    cfg = TemplateReportConfig(paths=tuple(sorted(EXAMPLES.glob("*.yaml"))), requests=EXAMPLES / "support_requests.jsonl",
                               reorder=True, json_path=tmp_path / "report.json")
    result = run_report(cfg)
    assert json.loads((tmp_path / "report.json").read_text()) == result
    naive, rag = result["templates"]["support-naive"], result["templates"]["rag-qa"]
    assert naive["before"]["requests"] == 6 and rag["after"]["requests"] == 4
    assert naive["before"]["hit_rate"] < 0.10 and naive["after"]["hit_rate"] > 0.5  # the timestamp moved last
    assert rag["before"]["hit_rate"] == rag["after"]["hit_rate"] > 0.5  # already cache-friendly: unchanged
    assert result["before"]["hit_rate"] < result["after"]["hit_rate"]
    assert result["settings"]["block_size"] == 16


def test_report_names_unknown_templates(tmp_path: Path) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"template": "nope", "variables": {}}\n')
    with pytest.raises(ConfigError, match=r"unknown template\(s\) \['nope'\]"):
        run_report(TemplateReportConfig(paths=(EXAMPLES / "rag_qa.yaml",), requests=requests))
