"""Workload YAML files and the seeded request sampler: every shipped workload loads, seeds repeat, the
distributions, prefix share and model mix come out as declared, and prompt lengths hold in real tokens."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from bench.workloads import load_workload, shipped_workload_names
from bench.workloads.sampler import WORDS, RequestSampler, resolve_models, sample_dist
from lorafleet.config.load import Dist, ModelChoice, parse_duration_s, parse_slo
from lorafleet.errors import ConfigError, NotFoundError

LISTED = [{"id": "base-m", "parent": None}, {"id": "t-b", "parent": "base-m"}, {"id": "t-a", "parent": "base-m"},
          {"id": "t-c", "parent": "base-m"}, {"id": "other", "parent": "x"}]


def test_shipped_workloads_load():
    assert set(shipped_workload_names()) == {"chat", "rag", "multi-tenant-lora"}
    chat, rag, lora = (load_workload(n) for n in ("chat", "rag", "multi-tenant-lora"))
    assert chat.api == "chat" and chat.think_time_s.kind == "exponential"
    assert rag.api == "completions" and rag.prompt_tokens.min >= 1536 and rag.shared_prefix.tokens == 1024
    assert lora.discover_adapters is not None and lora.discover_adapters.skew == "zipf"


def test_workload_file_errors_are_listed_together(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("api: grpc\nprompt_tokens: {kind: gamma}\noutput_tokens: {kind: uniform, min: 9, max: 3}\n"
                   "shared_prefix: {share: 2}\ntemplates: [{name: t, text: no placeholder}]\nspeed: 3\n")
    with pytest.raises(ConfigError) as e:
        load_workload(bad)
    msg = str(e.value)
    for part in ("prompt_tokens", "kind must be one of", "min (9) is above max (3)", "shared_prefix", "{prompt}"):
        assert part in msg, part
    with pytest.raises(NotFoundError, match="not a shipped workload"):
        load_workload("nope")


def test_same_seed_same_requests_and_users_differ():
    w = load_workload("chat")
    models = (ModelChoice("m"),)
    a = [RequestSampler(w, models, user_index=0).next_request()]
    first = RequestSampler(w, models, user_index=0)
    again = RequestSampler(w, models, user_index=0)
    seq1 = [first.next_request().body for _ in range(20)]
    seq2 = [again.next_request().body for _ in range(20)]
    assert seq1 == seq2 and seq1[0] == a[0].body
    other_user = RequestSampler(w, models, user_index=1).next_request().body
    other_seed = RequestSampler(w, models, user_index=0, seed=99).next_request().body
    assert other_user != seq1[0] and other_seed != seq1[0]
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} and "seed" in b for b in seq1)


def test_distributions_prefix_share_and_template_mix():
    w = load_workload("chat")
    sampler = RequestSampler(w, (ModelChoice("a", 3), ModelChoice("b", 1)), user_index=0)
    reqs = [sampler.next_request() for _ in range(4000)]
    prompts = [r.prompt_tokens for r in reqs]
    assert min(prompts) >= 16 and max(prompts) <= 768
    assert statistics.median(prompts) == pytest.approx(96, rel=0.06)  # lognormal median
    outputs = [r.max_tokens for r in reqs]
    assert min(outputs) >= 32 and max(outputs) <= 160 and statistics.mean(outputs) == pytest.approx(96, rel=0.03)
    assert sum(r.has_prefix for r in reqs) / len(reqs) == pytest.approx(0.7, abs=0.03)
    assert sum(r.model == "a" for r in reqs) / len(reqs) == pytest.approx(0.75, abs=0.03)
    assert sum(r.template == "assistant" for r in reqs) / len(reqs) == pytest.approx(0.75, abs=0.03)
    with_system = [r for r in reqs if r.template == "assistant"]
    assert all(r.body["messages"][0]["role"] == "system" for r in with_system)
    prefixed = [r.body["messages"][-1]["content"] for r in with_system if r.has_prefix]
    assert len({" ".join(text.split()[:48]) for text in prefixed}) == 2  # two shared prefixes of 48 words
    unprefixed = [r.body["messages"][-1]["content"] for r in with_system if not r.has_prefix]
    assert len({" ".join(text.split()[:8]) for text in unprefixed}) == len(unprefixed)
    think = [sampler.think_time_s() for _ in range(4000)]
    assert max(think) <= 5 and statistics.mean(think) == pytest.approx(1.0, rel=0.08)


def test_sample_dist_kinds():
    rng = random.Random(0)
    assert sample_dist(Dist("fixed", value=7), rng) == 7
    uni = [sample_dist(Dist("uniform", min=10, max=20), rng) for _ in range(3000)]
    assert 10 <= min(uni) and max(uni) <= 20 and statistics.mean(uni) == pytest.approx(15, rel=0.02)
    norm = [sample_dist(Dist("normal", mean=100, std=10, min=95), rng) for _ in range(3000)]
    assert min(norm) == 95  # clamped
    assert sample_dist(Dist("exponential", mean=0), rng) == 0
    with pytest.raises(ConfigError, match="needs"):
        Dist("lognormal", median=3)


def test_prompt_lengths_in_real_tokens(tokenizer):
    """A body of N words is N tokens of the SmolLM2 tokenizer (each word is one token with its space)."""
    assert all(len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1 for w in WORDS)
    w = load_workload("rag")
    sampler = RequestSampler(w, (ModelChoice("m"),))
    template_tokens = len(tokenizer("Use the context to answer.\n\nContext: \n\nAnswer:", add_special_tokens=False).input_ids)
    for _ in range(5):
        r = sampler.next_request()
        n = len(tokenizer(r.body["prompt"], add_special_tokens=False).input_ids)
        assert abs(n - template_tokens - r.prompt_tokens) <= 3, (n, r.prompt_tokens)


def test_resolve_models():
    chat = load_workload("chat")
    assert resolve_models(chat, LISTED) == (ModelChoice("base-m", 1),)
    assert resolve_models(chat, LISTED, base="other") == (ModelChoice("other", 1),)
    with pytest.raises(ConfigError, match="not served by the target"):
        resolve_models(chat, LISTED, base="missing")
    lora = load_workload("multi-tenant-lora")  # zipf alpha 1.1 over sorted adapters, 10% base
    got = resolve_models(lora, LISTED)
    raw = [1, 1 / 2**1.1, 1 / 3**1.1]
    assert [c.name for c in got] == ["base-m", "t-a", "t-b", "t-c"]
    assert got[0].weight == pytest.approx(0.1)
    assert [c.weight for c in got[1:]] == pytest.approx([0.9 * x / sum(raw) for x in raw])
    with pytest.raises(ConfigError, match="lists none"):
        resolve_models(lora, LISTED[:1])


def test_durations_and_slos():
    assert parse_duration_s("2s") == 2 and parse_duration_s("100ms") == 0.1 and parse_duration_s("1.5m") == 90
    slo = parse_slo("ttft_p99=2s, tpot_p99=100ms,error_rate=0.05")
    assert [(lim.key, lim.max_ms) for lim in slo.limits] == [("ttft_p99", 2000), ("tpot_p99", 100)]
    assert slo.max_error_rate == 0.05 and parse_slo("").limits == ()
    with pytest.raises(ConfigError) as e:
        parse_slo("ttft_p42=1s,latency=3,tpot_p99=fast")
    assert "ttft_p42" in str(e.value) and "latency" in str(e.value) and "not a duration" in str(e.value)
