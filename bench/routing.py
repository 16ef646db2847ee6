"""``lorafleet bench routing``: what routing policies do on two real ``lorafleet serve`` replicas behind the
gateway (everything over HTTP; each policy gets a fresh gateway, the replicas are shared).

* Prefix run: ``num_tenants`` tenants, each with its own long system prompt, send chat requests in a random
  order. Each replica's KV cache holds about ``tenant_slots`` tenants' prompts, fewer than all of them, as in
  a real fleet where the sum of the caches, not one cache, can hold the working set. The hit rate is
  prefix-cache hit tokens / looked-up tokens, read from the replicas' ``vllm:prefix_cache_*`` counters
  (deltas over the run). Each policy gets its own tenants, so no run profits from the previous one's cache.
* LoRA run: ``adapter_requests`` requests for ``num_adapters`` adapters in a random order; each replica keeps
  at most ``max_adapters`` loaded. Loads are the gateway's ``gateway:adapter_loads_total{result="ok"}``;
  before each policy the replicas' adapters are unloaded.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.adapters import cached_random_adapters
from bench.results_io import print_targets, target
from lorafleet.atomic import write_json
from lorafleet.processes import ManagedServer, ServerSpec
from bench.sysinfo import cpu_info, versions
from lorafleet.chat import chat_token_ids
from lorafleet.config import lorafleet_home
from lorafleet.config.gateway_bench import RoutingBenchConfig
from lorafleet.loading import resolve_model

WORDS = ("account answer balance border budget change channel client contract credit customer delivery detail "
         "invoice issue language manager market message notice order package partner payment policy price "
         "product project quality record refund region report request review schedule service shipment "
         "status supplier support system ticket update warranty").split()
BLOCK_TOKENS = 16  # the engine's KV block
MODEL_NAME = "base"


def tenant_prompts(num: int, approx_tokens: int, seed: int) -> list[str]:
    """One system prompt per tenant, about ``approx_tokens`` tokens each (SmolLM2 spends ~1.2 tokens a word)."""
    rnd = random.Random(seed)
    words = max(8, int(approx_tokens / 1.2))
    return [f"You are the assistant of tenant {seed}-{t}. Rules: " + " ".join(rnd.choice(WORDS) for _ in range(words))
            for t in range(num)]


def prompt_blocks(tokenizer, system_prompt: str) -> int:
    """KV blocks of one full chat prompt of a tenant (template, system prompt, a question, generation prompt)."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": "Question 00: what is the status?"}]
    return math.ceil(len(chat_token_ids(tokenizer, messages)) / BLOCK_TOKENS)


# -- processes ---------------------------------------------------------------------------------------------
def replica_spec(i: int, model: Path, num_kv_blocks: int, cfg: RoutingBenchConfig, logs: Path, adapter_root: Path) -> ServerSpec:
    argv = [sys.executable, "-m", "lorafleet.cli", "serve", "--model", str(model), "--served-model-name", MODEL_NAME,
            "--host", "127.0.0.1", "--port", "{port}", "--num-kv-blocks", str(num_kv_blocks), "--max-model-len", "1024",
            "--max-loras", str(cfg.max_adapters), "--max-lora-rank", "8", "--num-threads", "1", "--log-level", "warning",
            "--allow-runtime-lora", str(adapter_root)]  # the gateway loads the tenants' adapters on demand
    return ServerSpec(f"replica-{i}", argv, {}, logs / f"routing-replica-{i}.log", start_timeout_s=600)


def gateway_spec(policy: str, replica_urls: list[str], adapters: dict[str, Path], cfg: RoutingBenchConfig, work: Path,
                 logs: Path) -> ServerSpec:
    root = next(iter(adapters.values())).parent
    config = {"backends": [{"name": f"r{i}", "kind": "embedded", "url": u, "base_model": MODEL_NAME,
                            "max_adapters": cfg.max_adapters} for i, u in enumerate(replica_urls)],
              "adapter_roots": [str(root)],
              "adapters": [{"name": n, "path": p.name, "base_model": MODEL_NAME} for n, p in adapters.items()],
              "routing": {"policy": policy}, "limits": {"health_interval_s": 0.5}}
    path = work / f"gateway-{policy}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "lorafleet.cli", "gateway", "--config", str(path), "--port", "{port}", "--log-level", "warning"]
    return ServerSpec(f"gateway-{policy}", argv, {}, logs / f"routing-gateway-{policy}.log", start_timeout_s=60)


# -- measurements over HTTP -----------------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """Every sample of ``url``/metrics, keyed ``name{sorted labels}``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def prefix_counters(urls: list[str]) -> tuple[float, float]:
    """(hit tokens, looked-up tokens) summed over the replicas."""
    hits = queries = 0.0
    for url in urls:
        m = scrape(url)
        hits += sum(v for k, v in m.items() if k.startswith("vllm:prefix_cache_hits_total"))
        queries += sum(v for k, v in m.items() if k.startswith("vllm:prefix_cache_queries_total"))
    return hits, queries


async def send_all(url: str, bodies: list[tuple[str, dict]], concurrency: int) -> None:
    """POST every (path, body) with at most ``concurrency`` in flight, in order; any error stops the run."""
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def worker() -> None:
            while queue:
                path, body = queue.pop()
                r = await client.post(path, json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def prefix_run(policy: str, urls: list[str], gw_url: str, prompts: list[str], cfg: RoutingBenchConfig, seed: int) -> dict:
    rnd = random.Random(seed)
    order = [t for t in range(len(prompts)) for _ in range(cfg.requests_per_tenant)]
    rnd.shuffle(order)
    bodies = [("/v1/chat/completions", {"model": MODEL_NAME, "max_tokens": cfg.output_tokens, "temperature": 0,
                                        "messages": [{"role": "system", "content": prompts[t]},
                                                     {"role": "user", "content": f"Question {i:02d}: what is the status?"}]})
              for i, t in enumerate(order)]
    hits0, queries0 = prefix_counters(urls)
    asyncio.run(send_all(gw_url, bodies, cfg.concurrency))
    hits1, queries1 = prefix_counters(urls)
    hits, queries = hits1 - hits0, queries1 - queries0
    return {"hit_rate": hits / queries if queries else 0.0, "hit_tokens": hits, "query_tokens": queries,
            "requests": len(bodies), "route_decisions": route_decisions(gw_url)}


def lora_run(policy: str, urls: list[str], gw_url: str, adapters: list[str], cfg: RoutingBenchConfig, seed: int) -> dict:
    rnd = random.Random(seed)
    names = [adapters[i % len(adapters)] for i in range(cfg.adapter_requests)]
    rnd.shuffle(names)
    bodies = [("/v1/completions", {"model": n, "prompt": f"Ticket {i}: the customer asks", "max_tokens": cfg.output_tokens,
                                   "temperature": 0}) for i, n in enumerate(names)]
    asyncio.run(send_all(gw_url, bodies, cfg.concurrency))
    m = scrape(gw_url)
    loads = sum(v for k, v in m.items() if k.startswith("gateway:adapter_loads_total") and "'result', 'ok'" in k)
    unloads = sum(v for k, v in m.items() if k.startswith("gateway:adapter_unloads_total"))
    return {"adapter_loads": loads, "adapter_unloads": unloads, "requests": len(bodies),
            "route_decisions": route_decisions(gw_url)}


def route_decisions(gw_url: str) -> dict[str, float]:
    m = scrape(gw_url)
    return {k.removeprefix("gateway:route_decisions_total"): v for k, v in m.items()
            if k.startswith("gateway:route_decisions_total")}


def unload_all(urls: list[str]) -> None:
    for url in urls:
        for card in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]:
            if card.get("parent"):
                httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": card["id"]}, timeout=60).raise_for_status()


# -- the benchmark --------------------------------------------------------------------------------------------
def run(cfg: RoutingBenchConfig) -> dict:
    """Run both workloads under the policies compared, print a table, write ``cfg.json_path``."""
    from transformers import AutoTokenizer

    console = Console(stderr=True)
    logs = lorafleet_home() / "bench" / "logs"
    model = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt_sets = {p: tenant_prompts(cfg.num_tenants, cfg.system_prompt_tokens, cfg.seed + k)
                   for k, p in enumerate(("round_robin", "prefix_aware"))}
    blocks = max(prompt_blocks(tokenizer, p) for ps in prompt_sets.values() for p in ps)
    # Room for tenant_slots tenants' prompts, plus half a prompt so a running request need not evict them all.
    num_kv_blocks = cfg.tenant_slots * (blocks + 1) + blocks // 2
    with console.status("making LoRA adapters"):
        adapters = cached_random_adapters(model, cfg.num_adapters, cache="routing-adapters", name_prefix="tenant-lora",
                                          seed=2000)
    prefix: dict[str, dict] = {}
    lora: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-routing-") as tmp, ExitStack() as stack:
        with console.status("starting two lorafleet serve replicas"):
            replicas = [stack.enter_context(ManagedServer(replica_spec(i, model, num_kv_blocks, cfg, logs,
                                                                        next(iter(adapters.values())).parent))) for i in range(2)]
        urls = [r.base_url for r in replicas]
        for k, policy in enumerate(("round_robin", "prefix_aware")):
            with console.status(f"prefix run: {policy}"), ManagedServer(gateway_spec(policy, urls, adapters, cfg, Path(tmp), logs)) as gw:
                prefix[policy] = prefix_run(policy, urls, gw.base_url, prompt_sets[policy], cfg, cfg.seed + 10 + k)
        for k, policy in enumerate(("round_robin", "lora_affinity")):
            unload_all(urls)
            with console.status(f"LoRA run: {policy}"), ManagedServer(gateway_spec(policy, urls, adapters, cfg, Path(tmp), logs)) as gw:
                lora[policy] = lora_run(policy, urls, gw.base_url, list(adapters), cfg, cfg.seed + 20)
    results = summarise(cfg, prefix, lora, blocks, num_kv_blocks)
    write_json(cfg.json_path, results)
    _print_table(console, results)
    return results


def summarise(cfg: RoutingBenchConfig, prefix: dict, lora: dict, prompt_blocks_: int, num_kv_blocks: int) -> dict:
    hit = {p: r["hit_rate"] for p, r in prefix.items()}
    loads = {p: r["adapter_loads"] for p, r in lora.items()}
    hit_ratio = hit["prefix_aware"] / hit["round_robin"] if hit["round_robin"] else math.inf
    load_ratio = loads["round_robin"] / loads["lora_affinity"] if loads["lora_affinity"] else math.inf
    return {
        "prefix_hit_rate": hit,
        "adapter_loads": loads,
        "prefix_hit_rate_ratio": hit_ratio,
        "adapter_loads_ratio": load_ratio,
        "targets": {
            "prefix_hit_rate": target("prefix_aware hit rate >= 1.8x round_robin", hit_ratio >= 1.8),
            "adapter_loads": target("lora_affinity loads >= 3x fewer than round_robin", load_ratio >= 3.0),
        },
        "replicas": {"count": 2, "num_kv_blocks": num_kv_blocks, "prompt_blocks": prompt_blocks_,
                     "max_loras": cfg.max_adapters},
        "details": {"prefix": prefix, "lora": lora},
        "cpu": cpu_info(),
        "versions": versions("lorafleet", "torch"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }


def _print_table(console: Console, r: dict) -> None:
    table = Table(title="lorafleet bench routing (two lorafleet serve replicas)")
    for col in ("workload", "baseline (round_robin)", "policy", "ratio"):
        table.add_column(col)
    hit, loads = r["prefix_hit_rate"], r["adapter_loads"]
    table.add_row(f"prefix-cache hit rate, {r['settings']['num_tenants']} tenants", f"{hit['round_robin']:.3f}",
                  f"prefix_aware {hit['prefix_aware']:.3f}", f"{r['prefix_hit_rate_ratio']:.2f}x")
    table.add_row(f"adapter loads, {r['settings']['num_adapters']} adapters", f"{loads['round_robin']:.0f}",
                  f"lora_affinity {loads['lora_affinity']:.0f}", f"{r['adapter_loads_ratio']:.2f}x fewer")
    console.print(table)
    print_targets(console, r["targets"])
