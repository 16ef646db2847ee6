"""The figures of a soak run, as pure functions of what it recorded: per-request records (``requests.jsonl``
of the locust run) and periodic samples (RSS per process, gateway and engine metrics).

* RSS growth: per process, the median of the last three samples over the median of the first three after
  the warm-up (medians, so one sample taken during a burst of allocation does not decide it);
* TTFT drift: p99 TTFT of requests started in the last third of the measured window over that of the first
  third;
* a timeline of requests, errors and TTFT percentiles per window, for the report and plots;
* Prometheus text parsed into samples, and sums over them, for counters and leak checks;
* :func:`summarize`: the soak document with the issue's keys first and its pass/fail targets.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import LoadSummary, percentile
from bench.results_io import target
from lorafleet.config.soak import SoakConfig


@dataclass(frozen=True, slots=True)
class PromSample:
    """One sample of a Prometheus exposition: metric sample name (``..._total`` included), labels, value."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str) -> list[PromSample]:
    from prometheus_client.parser import text_string_to_metric_families

    return [PromSample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric_total(samples: Sequence[PromSample], name: str, status_class: str | None = None,
                 **labels: str) -> float:
    """Sum of ``name`` over samples whose labels match ``labels``; ``status_class="5"`` keeps ``status=5xx``."""
    total = 0.0
    for s in samples:
        if s.name != name or any(s.labels.get(k) != v for k, v in labels.items()):
            continue
        if status_class is not None and not str(s.labels.get("status", "")).startswith(status_class):
            continue
        total += s.value
    return total


def rss_growth_pct(rss_mb: Sequence[tuple[float, float]], warmup_s: float) -> float | None:
    """Growth of a process's RSS after the warm-up, in percent; ``rss_mb`` is (seconds since start, MB).
    None with fewer than three samples after the warm-up."""
    after = [mb for t, mb in rss_mb if t >= warmup_s]
    if len(after) < 3:
        return None
    first, last = statistics.median(after[:3]), statistics.median(after[-3:])
    return 100.0 * (last - first) / first


def ttft_p99_drift_pct(records: Sequence[Mapping[str, Any]], start: float, warmup_s: float) -> dict[str, Any]:
    """p99 TTFT of the first and last thirds of the successful requests started after ``start + warmup_s``
    (by start time), and the drift between them in percent (None with fewer than 10 requests per third)."""
    ok = sorted((r for r in records if r.get("ok") and r["start"] >= start + warmup_s), key=lambda r: r["start"])
    if not ok:
        return {"first_ms": None, "last_ms": None, "drift_pct": None}
    t0, t1 = ok[0]["start"], ok[-1]["start"]
    third = (t1 - t0) / 3
    first = [1000 * r["ttft_s"] for r in ok if r["start"] <= t0 + third]
    last = [1000 * r["ttft_s"] for r in ok if r["start"] >= t1 - third]
    if len(first) < 10 or len(last) < 10:
        return {"first_ms": None, "last_ms": None, "drift_pct": None}
    p_first, p_last = percentile(first, 0.99), percentile(last, 0.99)
    return {"first_ms": p_first, "last_ms": p_last, "drift_pct": 100.0 * (p_last - p_first) / p_first}


def timeline(records: Sequence[Mapping[str, Any]], start: float, window_s: float) -> list[dict[str, Any]]:
    """Per window of ``window_s`` (by request start): requests, errors, TTFT p50/p99 in ms."""
    windows: dict[int, list[Mapping[str, Any]]] = {}
    for r in records:
        windows.setdefault(int((r["start"] - start) // window_s), []).append(r)
    out = []
    for i in sorted(windows):
        recs = windows[i]
        ttfts = [1000 * r["ttft_s"] for r in recs if r.get("ok")]
        out.append({"t_s": i * window_s, "requests": len(recs), "errors": sum(1 for r in recs if not r.get("ok")),
                    "ttft_p50_ms": percentile(ttfts, 0.5) if ttfts else None,
                    "ttft_p99_ms": percentile(ttfts, 0.99) if ttfts else None})
    return out


def think_time_for(capacity_req_s: float, users: int, load_fraction: float, latency_s: float) -> float:
    """Mean think time that makes ``users`` closed-loop users offer ``load_fraction`` of ``capacity_req_s``:
    each user sends one request per (latency + think time) seconds."""
    if capacity_req_s <= 0:
        return 0.0
    return max(0.0, users / (load_fraction * capacity_req_s) - latency_s)


def summarize(cfg: SoakConfig, summary: LoadSummary, records: list[dict], samples: list[dict], quiet: dict, start_wall: float,
              calibration: dict | None, think_time_s: float) -> dict[str, Any]:
    """The soak document: the issue's keys first, then details and targets."""
    warmup = cfg.effective_warmup_s
    growth = {name: rss_growth_pct([(s["t_s"], s["rss_mb"][name]) for s in samples if s["rss_mb"].get(name)], warmup)
              for name in samples[0]["rss_mb"]} if samples else {}
    known = [g for g in growth.values() if g is not None]
    drift = ttft_p99_drift_pct(records, start_wall, warmup)
    gateway_5xx = int(quiet["gateway"]["status_5xx"])
    leaks = {"gateway_in_flight": quiet["gateway"]["in_flight"], "gateway_queued": quiet["gateway"]["queued"],
             **{f"{n}_{k}": e[k] for n, e in quiet["engines"].items() for k in ("running", "waiting", "kv_usage")}}
    res: dict[str, Any] = {
        "minutes": cfg.minutes, "requests": len(records), "gateway_5xx": gateway_5xx,
        "rss_growth_pct": max(known) if known else None, "ttft_p99_drift_pct": drift["drift_pct"],
        "failed_requests": sum(1 for r in records if not r.get("ok")),
        "engine_5xx": int(sum(e["status_5xx"] for e in quiet["engines"].values())),
        "leaked": {k: v for k, v in leaks.items() if v}, "rss_growth_pct_by_process": growth,
        "rss_mb_first_last": {n: [s["rss_mb"][n] for s in (samples[0], samples[-1])] for n in growth} if samples else {},
        "ttft_p99_ms_first_last_third": [drift["first_ms"], drift["last_ms"]],
        "req_s": summary.req_s, "ttft_ms": dataclasses.asdict(summary.ttft_ms), "tpot_ms": dataclasses.asdict(summary.tpot_ms),
        "errors": summary.errors, "preemptions": sum(e["preemptions"] for e in quiet["engines"].values()),
        "think_time_s": think_time_s, "calibration": calibration, "warmup_s": warmup,
        "timeline": timeline(records, start_wall, max(30.0, cfg.duration_s / 20)),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
    }
    res["targets"] = {
        "gateway_5xx": target("no 5xx answered by the gateway", gateway_5xx == 0),
        "failed_requests": target("no failed request", res["failed_requests"] == 0),
        "rss_growth": target(f"RSS growth after warm-up < {cfg.max_rss_growth_pct:g}%",
                             None if res["rss_growth_pct"] is None else res["rss_growth_pct"] < cfg.max_rss_growth_pct),
        "ttft_drift": target(f"p99 TTFT drift < {cfg.max_ttft_drift_pct:g}%",
                             None if drift["drift_pct"] is None else drift["drift_pct"] < cfg.max_ttft_drift_pct),
        "no_leaks": target("nothing in flight, queued, running or holding KV blocks once the load stops",
                           not res["leaked"]),
    }
    res["passed"] = all(t["met"] is not False for t in res["targets"].values())
    return res
