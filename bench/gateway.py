"""``lorafleet bench gateway``: what a proxy adds in front of a backend that answers at once.

One run starts the fast backend (:mod:`bench.fast_backend`), our gateway in front of it (as ``lorafleet
gateway``, with an API key) and the LiteLLM proxy in front of the same backend (its own venv, no database,
a master key), then measures, with one lean client (:mod:`bench.sse_client`) and streamed chat requests:

* TTFT at concurrency 1, direct, through the gateway and through LiteLLM, interleaved request by request so
  that load from other processes hits all of them alike; the added TTFT is a proxy's percentile minus the
  direct one;
* requests per second at ``concurrency`` streams, runs of each system alternating, median of ``repeats``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.results_io import print_targets, target
from lorafleet.atomic import write_json
from lorafleet.processes import ManagedServer, ServerSpec
from bench.sse_client import SSEClient, run_concurrent
from bench.sysinfo import cpu_info, versions
from lorafleet.config import lorafleet_home
from lorafleet.config.gateway_bench import GatewayBenchConfig
from lorafleet.errors import ConfigError

PATH = "/v1/chat/completions"
BENCH_KEY = "sk-lorafleet-bench"  # both proxies check a key: auth is part of what they cost


def request_body(output_tokens: int) -> bytes:
    return json.dumps({"model": "fast", "messages": [{"role": "user", "content": "Say something."}],
                       "max_tokens": output_tokens, "stream": True}).encode()


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _percentiles_ms(ttfts_s: list[float]) -> dict:
    return {"p50": 1000 * _quantile(ttfts_s, 0.5), "p99": 1000 * _quantile(ttfts_s, 0.99), "n": len(ttfts_s)}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# -- the systems --------------------------------------------------------------------------------------------
def _gateway_spec(backend_url: str, work: Path, logs: Path) -> ServerSpec:
    cfg = {"backends": [{"name": "fast", "kind": "vllm", "url": backend_url, "base_model": "fast"}],
           "auth": {"keys": [{"name": "bench", "key_env": "LORAFLEET_BENCH_KEY"}]},
           "limits": {"max_in_flight": 4096}}
    (work / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, "-m", "lorafleet.cli", "gateway", "--config", str(work / "gateway.yaml"), "--port", "{port}",
            "--log-level", "warning"]
    return ServerSpec("gateway", argv, {"LORAFLEET_BENCH_KEY": BENCH_KEY}, logs / "gateway.log", start_timeout_s=60)


def _litellm_spec(python: str, backend_url: str, work: Path, logs: Path) -> ServerSpec:
    cfg = {"model_list": [{"model_name": "fast", "litellm_params": {"model": "openai/fast", "api_base": f"{backend_url}/v1",
                                                                    "api_key": "none"}}],
           "general_settings": {"master_key": BENCH_KEY}, "litellm_settings": {"telemetry": False}}
    (work / "litellm.yaml").write_text(yaml.safe_dump(cfg))
    exe = Path(python).with_name("litellm")
    argv = [str(exe), "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1", "--port", "{port}"]
    # The local cost map: LiteLLM otherwise fetches it from the internet at start-up.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    return ServerSpec("litellm", argv, env, logs / "litellm.log", start_timeout_s=240, health_path="/health/liveliness")


# -- measurements -------------------------------------------------------------------------------------------
async def _ttft_interleaved(urls: dict[str, str], counts: dict[str, int], body: bytes, progress: Progress) -> dict:
    """TTFTs in seconds per system; request ``i`` goes to every system still short of its count, in turn."""
    clients = {name: SSEClient(url, {"Authorization": f"Bearer {BENCH_KEY}"}) for name, url in urls.items()}
    out: dict[str, list[float]] = {name: [] for name in urls}
    task = progress.add_task("TTFT at concurrency 1", total=sum(counts.values()))
    try:
        for name, c in clients.items():  # warm-up: connections, caches, JITless paths
            for _ in range(20):
                await c.post(PATH, body)
        for i in range(max(counts.values())):
            for name, c in clients.items():
                if i < counts[name]:
                    out[name].append((await c.post(PATH, body)).ttft_s)
                    progress.advance(task)
    finally:
        for c in clients.values():
            c.close()
    return out


def _throughput(urls: dict[str, str], counts: dict[str, int], cfg: GatewayBenchConfig, body: bytes, progress: Progress,
                gateway_pid: int | None) -> tuple[dict, float | None]:
    """Median requests/s per system over ``cfg.repeats`` alternating runs, and the gateway's CPU per request."""
    runs: dict[str, list[float]] = {name: [] for name in urls}
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    task = progress.add_task(f"throughput at {cfg.concurrency} streams", total=cfg.repeats * len(urls))
    cpu_s, num_gateway = 0.0, 0
    for _ in range(cfg.repeats):
        for name, url in urls.items():
            before = _cpu_seconds(gateway_pid) if name == "gateway" and gateway_pid else None
            runs[name].append(asyncio.run(run_concurrent(url, PATH, body, counts[name], cfg.concurrency, headers)))
            if before is not None and (after := _cpu_seconds(gateway_pid)) is not None:
                cpu_s, num_gateway = cpu_s + after - before, num_gateway + counts[name] + cfg.concurrency
            progress.advance(task)
    cpu_us = 1e6 * cpu_s / num_gateway if num_gateway else None
    return {name: {"median": statistics.median(v), "runs": v} for name, v in runs.items()}, cpu_us


def run(cfg: GatewayBenchConfig) -> dict:
    """Run the benchmark, print a table and write ``cfg.json_path``. Returns the results."""
    if cfg.litellm_python and not Path(cfg.litellm_python).exists():
        raise ConfigError(f"{cfg.litellm_python} not found: run `make litellm-venv`, or pass --litellm-python '' to skip LiteLLM")
    console = Console(stderr=True)
    logs = lorafleet_home() / "bench" / "logs"
    body = request_body(cfg.output_tokens)
    backend_argv = [sys.executable, "-m", "bench.fast_backend", "--port", "{port}"]
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-gateway-") as tmp, ExitStack() as servers:
        backend = servers.enter_context(ManagedServer(ServerSpec("fast-backend", backend_argv, {}, logs / "fast_backend.log",
                                                                 start_timeout_s=60)))
        gateway = servers.enter_context(ManagedServer(_gateway_spec(backend.base_url, Path(tmp), logs)))
        urls = {"direct": backend.base_url, "gateway": gateway.base_url}
        if cfg.litellm_python:
            with console.status("starting the LiteLLM proxy"):
                urls["litellm"] = servers.enter_context(ManagedServer(
                    _litellm_spec(cfg.litellm_python, backend.base_url, Path(tmp), logs))).base_url
        with Progress(console=console, transient=True) as progress:
            ttft_counts = {"direct": cfg.ttft_requests, "gateway": cfg.ttft_requests, "litellm": cfg.litellm_ttft_requests}
            ttfts = asyncio.run(_ttft_interleaved(urls, ttft_counts, body, progress))
            tp_counts = {"direct": cfg.throughput_requests, "gateway": cfg.throughput_requests,
                         "litellm": cfg.litellm_throughput_requests}
            throughput, cpu_us = _throughput(urls, tp_counts, cfg, body, progress, gateway.pid)
    results = summarise(cfg, {k: _percentiles_ms(v) for k, v in ttfts.items()}, throughput, cpu_us)
    write_json(cfg.json_path, results)
    _print_table(console, results)
    return results


def summarise(cfg: GatewayBenchConfig, ttft_ms: dict, throughput: dict, gateway_cpu_us: float | None) -> dict:
    """The results document: the issue's keys first, then details and the targets."""
    direct, gw = ttft_ms["direct"], ttft_ms["gateway"]
    overhead = {"p50": gw["p50"] - direct["p50"], "p99": gw["p99"] - direct["p99"]}
    rps = {"direct": throughput["direct"]["median"], "gateway": throughput["gateway"]["median"]}
    res: dict = {"overhead_ms": overhead, "throughput_rps": rps}
    lite = ttft_ms.get("litellm")
    if lite is not None:
        res["litellm"] = {"overhead_ms": {"p50": lite["p50"] - direct["p50"], "p99": lite["p99"] - direct["p99"]},
                          "throughput_rps": throughput["litellm"]["median"]}
    res["ttft_ms"] = ttft_ms
    res["throughput_runs_rps"] = {k: v["runs"] for k, v in throughput.items()}
    res["gateway_cpu_us_per_request"] = gateway_cpu_us
    res["cpu"] = cpu_info()
    res["versions"] = versions("lorafleet", "uvicorn", "httptools", "uvloop")
    if lite is not None:
        res["versions"]["litellm"] = _venv_version(cfg.litellm_python, "litellm")
    res["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    litellm = res.get("litellm")
    res["targets"] = {
        "overhead_p50": target("gateway adds <= 2 ms p50 TTFT at concurrency 1", overhead["p50"] <= 2.0),
        "overhead_p99": target("gateway adds <= 5 ms p99 TTFT at concurrency 1", overhead["p99"] <= 5.0),
        "throughput": target(f"gateway keeps >= 1/2 of direct req/s at {cfg.concurrency} streams",
                             rps["gateway"] >= 0.5 * rps["direct"]),
        "vs_litellm_overhead": target("gateway adds <= 1/5 of LiteLLM's p50 TTFT",
                                      None if litellm is None else overhead["p50"] <= litellm["overhead_ms"]["p50"] / 5),
        "vs_litellm_throughput": target("gateway carries >= 5x LiteLLM's req/s",
                                        None if litellm is None else rps["gateway"] >= 5 * litellm["throughput_rps"]),
    }
    return res


def _venv_version(python: str, dist: str) -> str | None:
    import subprocess

    try:
        return subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version('{dist}'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _print_table(console: Console, r: dict) -> None:
    table = Table(title="lorafleet bench gateway (fast backend, streamed chat)")
    for col in ("system", "TTFT p50 ms", "TTFT p99 ms", "added p50 ms", "added p99 ms", "req/s"):
        table.add_column(col)
    t = r["ttft_ms"]
    table.add_row("direct", f"{t['direct']['p50']:.2f}", f"{t['direct']['p99']:.2f}", "-", "-",
                  f"{r['throughput_rps']['direct']:.0f}")
    table.add_row("lorafleet gateway", f"{t['gateway']['p50']:.2f}", f"{t['gateway']['p99']:.2f}",
                  f"{r['overhead_ms']['p50']:.2f}", f"{r['overhead_ms']['p99']:.2f}", f"{r['throughput_rps']['gateway']:.0f}")
    if "litellm" in r:
        lo = r["litellm"]["overhead_ms"]
        table.add_row("LiteLLM proxy", f"{t['litellm']['p50']:.2f}", f"{t['litellm']['p99']:.2f}", f"{lo['p50']:.2f}",
                      f"{lo['p99']:.2f}", f"{r['litellm']['throughput_rps']:.0f}")
    console.print(table)
    print_targets(console, r["targets"])
