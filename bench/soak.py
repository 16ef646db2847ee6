"""``lorafleet bench soak``: a long locust run at a sustainable rate against a gateway and its replicas,
watching for what only time reveals: errors, latency drift, memory growth, leaked requests or KV blocks.

One run:

1. starts ``replicas`` ``lorafleet serve`` processes and a ``lorafleet gateway`` in front of them (with an API
   key, ``num_adapters`` random LoRA adapters and fewer adapter slots per replica than adapters, so adapters
   are loaded and unloaded all along);
2. calibrates: ``calibrate_s`` of locust with no think time gives the capacity (req/s) at ``users``; the soak's
   think time makes the users offer ``load_fraction`` of it (``--think-time`` skips this);
3. soaks for ``minutes``, sampling every ``sample_interval_s`` the RSS of the gateway and of each replica (its
   engine worker included) and the gateway's and engines' metrics (``samples.jsonl``);
4. checks that nothing leaked once the load stops: the gateway has no request in flight or queued, the
   engines none running or waiting and no KV block in use;
5. writes ``soak.json`` and ``soak.png`` in ``out_dir`` and merges the summary into the reliability results
   (``bench/reliability.py``): ``soak`` for runs of 30 minutes or more, ``soak_short`` otherwise.

Pass: no 5xx from the gateway, no failed request, RSS growth after warm-up under ``max_rss_growth_pct``,
p99 TTFT drift under ``max_ttft_drift_pct``, nothing leaked.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.load import read_records, run as run_locust
from bench.reliability import record_soak
from lorafleet.atomic import write_json
from lorafleet.config import lorafleet_home
from lorafleet.processes import ManagedServer, ServerSpec
from bench.soak_figures import metric_total, parse_prometheus, summarize, think_time_for
from lorafleet.config.load import LoadConfig
from lorafleet.config.soak import SoakConfig

API_KEY = "sk-lorafleet-soak"  # passed through the environment; a test greps the logs for it
LEAK_WAIT_S = 30.0


@dataclasses.dataclass
class Fleet:
    gateway: ManagedServer
    replicas: list[ManagedServer]


# -- the fleet ------------------------------------------------------------------------------------------------
def _lorafleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "lorafleet.cli", *args]


def _adapters(cfg: SoakConfig) -> dict[str, Path]:
    """``{name: dir}`` of the soak's random adapters (made once, kept under ``$LORAFLEET_HOME/bench/soak-adapters``)."""
    from bench.adapters import cached_random_adapters
    from lorafleet.loading import resolve_model

    return cached_random_adapters(resolve_model(cfg.model), cfg.num_adapters, cache="soak-adapters", name_prefix="soak-a",
                                  seed=0)


def start_fleet(cfg: SoakConfig, stack: ExitStack) -> Fleet:
    """Replicas and the adapters (made while the replicas load), then the gateway; all stopped when ``stack``
    closes."""
    from concurrent.futures import ThreadPoolExecutor

    logs, work = cfg.out_dir / "logs", cfg.out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    replicas = [ManagedServer(ServerSpec(f"replica-{i}", _lorafleet(
        "serve", "--model", cfg.model, "--host", "127.0.0.1", "--port", "{port}", "--num-kv-blocks", str(cfg.num_kv_blocks),
        "--max-loras", str(cfg.max_adapters), "--num-threads", str(cfg.num_threads), "--log-level", "warning",
        "--allow-runtime-lora", str(lorafleet_home() / "bench" / "soak-adapters")),  # where _adapters makes them
        {}, logs / f"replica-{i}.log", start_timeout_s=600)) for i in range(cfg.replicas)]
    with ThreadPoolExecutor(cfg.replicas + 1) as pool:
        started = [pool.submit(r.__enter__) for r in replicas]
        made = pool.submit(_adapters, cfg)
        for r in replicas:
            stack.push(r)  # stopped on exit even if another one failed to start
        for f in started:
            f.result()
        adapters = made.result()
    gw_cfg = {"backends": [{"name": f"r{i}", "kind": "embedded", "url": r.base_url, "base_model": "base",
                            "served_model": Path(cfg.model).name, "max_adapters": cfg.max_adapters}
                           for i, r in enumerate(replicas)],
              "adapter_roots": sorted({str(p.parent) for p in adapters.values()}),
              "adapters": [{"name": n, "path": str(p), "base_model": "base"} for n, p in adapters.items()],
              "auth": {"keys": [{"name": "soak", "key_env": "LORAFLEET_SOAK_KEY"}]},
              "limits": {"health_interval_s": 2.0}}
    (work / "gateway.yaml").write_text(yaml.safe_dump(gw_cfg))
    gateway = stack.enter_context(ManagedServer(ServerSpec(
        "gateway", _lorafleet("gateway", "--config", str(work / "gateway.yaml"), "--port", "{port}", "--log-level", "info"),
        {"LORAFLEET_SOAK_KEY": API_KEY}, logs / "gateway.log", start_timeout_s=120)))
    return Fleet(gateway, replicas)


# -- sampling ------------------------------------------------------------------------------------------------
def process_rss_mb(pid: int) -> float | None:
    """RSS of ``pid`` and all its descendants (the engine worker of a replica), in MB."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def scrape(url: str) -> list:
    try:
        r = httpx.get(f"{url}/metrics", timeout=10)
        return parse_prometheus(r.text) if r.status_code == 200 else []
    except httpx.HTTPError:
        return []


def take_sample(fleet: Fleet, t0: float) -> dict[str, Any]:
    gw = scrape(fleet.gateway.base_url)
    sample: dict[str, Any] = {
        "t_s": round(time.monotonic() - t0, 2), "rss_mb": {"gateway": process_rss_mb(fleet.gateway.pid)},
        "gateway": {"requests": metric_total(gw, "gateway:requests_total"),
                    "status_5xx": metric_total(gw, "gateway:requests_total", status_class="5"),
                    "in_flight": metric_total(gw, "gateway:requests_in_flight"),
                    "queued": metric_total(gw, "gateway:requests_queued")},
        "engines": {}}
    for i, r in enumerate(fleet.replicas):
        sample["rss_mb"][f"r{i}"] = process_rss_mb(r.pid)
        m = scrape(r.base_url)
        sample["engines"][f"r{i}"] = {
            "running": metric_total(m, "vllm:num_requests_running"), "waiting": metric_total(m, "vllm:num_requests_waiting"),
            "kv_usage": metric_total(m, "vllm:kv_cache_usage_perc"), "preemptions": metric_total(m, "vllm:num_preemptions_total"),
            "status_5xx": metric_total(m, "lorafleet:request_errors_total", status_class="5")}
    return sample


class Sampler(threading.Thread):
    """Takes a sample every ``interval_s`` until stopped, appending each to ``path`` as a JSON line."""

    def __init__(self, fleet: Fleet, t0: float, interval_s: float, path: Path) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.fleet, self.t0, self.interval_s, self.path = fleet, t0, interval_s, path
        self.samples: list[dict[str, Any]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        with open(self.path, "a", buffering=1) as f:
            while True:
                sample = take_sample(self.fleet, self.t0)
                self.samples.append(sample)
                f.write(json.dumps(sample) + "\n")
                if self._stop_event.wait(self.interval_s):
                    return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)


def wait_for_quiet(fleet: Fleet, t0: float, timeout_s: float = LEAK_WAIT_S) -> dict[str, Any]:
    """The first sample with nothing in flight anywhere, or the last one tried after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = take_sample(fleet, t0)
        busy = s["gateway"]["in_flight"] + s["gateway"]["queued"] + sum(
            e["running"] + e["waiting"] + e["kv_usage"] for e in s["engines"].values())
        if busy == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


# -- the run ---------------------------------------------------------------------------------------------------
def workload(cfg: SoakConfig, think_time_s: float) -> dict[str, Any]:
    """The soak workload: short chat turns, half with a shared system prompt, spread over base and adapters."""
    think = {"kind": "exponential", "mean": think_time_s, "max": 5 * think_time_s} if think_time_s > 0 else 0
    body = {"name": "soak", "description": "Soak: short chat turns over the base model and every adapter.",
            "api": "chat", "seed": 10, "ignore_eos": True, "temperature": 0.7,
            "prompt_tokens": {"kind": "lognormal", "median": cfg.prompt_tokens, "sigma": 0.5, "min": 8,
                              "max": 4 * cfg.prompt_tokens},
            "output_tokens": {"kind": "uniform", "min": max(1, cfg.output_tokens // 2), "max": cfg.output_tokens * 3 // 2},
            "shared_prefix": {"share": 0.5, "tokens": min(32, cfg.prompt_tokens), "count": 3},
            "templates": [{"name": "chat", "system": "You are a concise assistant.", "text": "{prompt}"}],
            "think_time_s": think, "timeout_s": 120}
    if cfg.num_adapters:
        body["discover_adapters"] = {"skew": "uniform", "base_weight": 0.4}
    return body


def _locust(cfg: SoakConfig, gateway_url: str, name: str, think_time_s: float, duration_s: float, warmup_s: float):
    out = cfg.out_dir / name
    (cfg.out_dir / f"{name}.yaml").write_text(yaml.safe_dump(workload(cfg, think_time_s)))
    load = LoadConfig(target=gateway_url, out_dir=out, workload=str(cfg.out_dir / f"{name}.yaml"), users=cfg.users,
                      spawn_rate=float(cfg.users), duration_s=duration_s, warmup_s=warmup_s, stop_timeout_s=120,
                      model="base", api_key=API_KEY)
    return run_locust(load), read_records(out / "requests.jsonl")


def run(cfg: SoakConfig) -> dict[str, Any]:
    """Run the soak; return (and write) its summary."""
    from rich.console import Console

    console = Console(stderr=True)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "samples.jsonl").unlink(missing_ok=True)
    with ExitStack() as stack:
        with console.status(f"starting {cfg.replicas} replica(s) and the gateway"):
            fleet = start_fleet(cfg, stack)
        t0 = time.monotonic()
        calibration = None
        think = cfg.think_time_s
        if think is None:
            console.print(f"calibrating for {cfg.calibrate_s:g} s at {cfg.users} users")
            cal, _ = _locust(cfg, fleet.gateway.base_url, "calibration", 0.0, cfg.calibrate_s, 0.0)
            think = think_time_for(cal.req_s, cfg.users, cfg.load_fraction, (cal.e2e_ms.mean or 0) / 1000)
            calibration = {"capacity_req_s": cal.req_s, "e2e_mean_ms": cal.e2e_ms.mean, "errors": cal.num_errors,
                           "think_time_s": think}
        console.print(f"soaking {cfg.minutes:g} min: {cfg.users} users, mean think time {think:.2f} s")
        start_wall, soak_offset_s = time.time(), time.monotonic() - t0
        sampler = Sampler(fleet, t0, cfg.sample_interval_s, cfg.out_dir / "samples.jsonl")
        sampler.start()
        try:
            summary, records = _locust(cfg, fleet.gateway.base_url, "soak", think, cfg.duration_s, cfg.effective_warmup_s)
        finally:
            sampler.stop()
        quiet = wait_for_quiet(fleet, t0)
    samples = [{**s, "t_s": round(s["t_s"] - soak_offset_s, 2)} for s in sampler.samples]  # from the soak's start
    result = summarize(cfg, summary, records, samples, quiet, start_wall, calibration, think)
    write_json(cfg.out_dir / "soak.json", result)
    _plot(result, samples, cfg.out_dir / "soak.png")
    if cfg.record:
        record_soak(result, cfg.json_path)
    return result


def _plot(result: dict[str, Any], samples: list[dict], path: Path) -> None:
    """RSS per process and TTFT p50/p99 per window over the run."""
    from bench.report import _pyplot, _save

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    for name in (samples[0]["rss_mb"] if samples else {}):
        ax1.plot([s["t_s"] / 60 for s in samples], [s["rss_mb"][name] for s in samples], label=name)
    ax1.axvline(result["warmup_s"] / 60, color="grey", linestyle=":", label="end of warm-up")
    ax1.set(xlabel="minutes", ylabel="RSS (MB)", title="memory")
    ax1.legend(fontsize=8)
    line = result["timeline"]
    for key in ("ttft_p50_ms", "ttft_p99_ms"):
        ax2.plot([w["t_s"] / 60 for w in line], [w[key] for w in line], marker=".", label=key)
    ax2.set(xlabel="minutes", ylabel="ms", title="TTFT per window")
    ax2.legend(fontsize=8)
    _save(fig, path)


def print_summary(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.results_io import print_targets

    console = Console()
    table = Table(title=f"lorafleet bench soak: {result['minutes']:g} min")
    for col in ("requests", "failed", "gateway 5xx", "req/s", "TTFT p99 ms", "TTFT p99 drift", "max RSS growth"):
        table.add_column(col, justify="right")
    pct = (lambda v: "-" if v is None else f"{v:+.1f}%")
    table.add_row(str(result["requests"]), str(result["failed_requests"]), str(result["gateway_5xx"]),
                  f"{result['req_s']:.2f}", f"{result['ttft_ms']['p99'] or 0:.0f}", pct(result["ttft_p99_drift_pct"]),
                  pct(result["rss_growth_pct"]))
    console.print(table)
    print_targets(console, result["targets"])


def run_cli(cfg: SoakConfig) -> dict[str, Any]:
    from lorafleet.errors import BackendError

    result = run(cfg)
    print_summary(result)
    print(f"results in {cfg.out_dir}: soak.json, soak.png, samples.jsonl, soak/ (locust), logs/")
    if not result["passed"]:
        raise BackendError("the soak did not pass: " + ", ".join(t["target"] for t in result["targets"].values()
                                                                  if t["met"] is False))
    return result
