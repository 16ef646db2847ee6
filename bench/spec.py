"""``lorafleet bench spec``: prompt-lookup speculative decoding on an input-grounded workload, on vs off.

One ``lorafleet serve`` runs the whole benchmark; each request turns speculation on or off with the
``num_speculative_tokens`` request field, so both arms share the process, the weights and the warm caches.
Every prompt asks the model to rewrite, copy or extract from a passage given in the prompt (the case prompt
lookup is for), single stream, greedy, ``output_tokens`` tokens (ignore_eos). Off and on runs alternate, so
load from other processes hits both arms alike; TPOT is (last token − first token) / (tokens − 1) as the
client sees it, the median over runs and prompts. The acceptance rate comes from the server's
``vllm:spec_decode_*`` counters; ``identical`` compares the greedy texts of every run of both arms.

Each prompt is sent once before it is measured, so every measured run starts from the same prefix-cache
state: a cold prefill and a warm one round bf16 differently, which would be a difference between runs, not
between the arms.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress

from bench.openai_client import StreamError, StreamTimer
from bench.results_io import print_targets, target
from lorafleet.atomic import write_json
from lorafleet.processes import ManagedServer, ServerSpec
from bench.sysinfo import cpu_info, versions
from lorafleet.config import lorafleet_home
from lorafleet.config.spec import SPEC_TPOT_TARGET_RATIO, SpecBenchConfig
from lorafleet.loading import resolve_model

PASSAGES = (
    "The lighthouse on the northern cape was built in 1874 from granite quarried two miles inland. Its lamp burned "
    "whale oil until 1902, then kerosene, and since 1931 it has been electric. The keeper's cottage now holds a "
    "small museum with the original lens, a logbook of storms, and photographs of the three families who tended "
    "the light. Visitors can climb the 112 steps to the gallery on weekends from May to September. On clear days "
    "the view reaches the islands to the east, and in winter the museum opens only on the first Sunday of each "
    "month. School groups can book a guided tour by writing to the harbour office at least two weeks ahead.",
    "Our team meets every Monday at nine to review the previous week. Each person lists what they finishd, what "
    "blocked them, and what they plan next. Blockers are asigned an owner before the meeting ends. Notes are "
    "posted in the shared folder by noon, and any decision that changes a deadline is sent to the whole "
    "department by email the same day. New members shadow a colleague for there first two weeks and present a "
    "short summary of their work at the end of the first month. The meeting never runs longer then thirty "
    "minutes; anything that needs more time gets its own session later in the week.",
    "To repot a houseplant, water it the day before so the roots hold together. Choose a pot one size larger with "
    "a drainage hole. Tip the plant out, loosen the outer roots with your fingers, and trim any that are dark or "
    "soft. Set it at the same depth as before, fill around it with fresh potting mix, press gently, and water "
    "until it drains from the bottom. Keep the plant out of direct sun for a week while the roots settle, and "
    "do not feed it for a month, because fresh mix already holds enough nutrients. Most plants need repotting "
    "every one to two years, when roots start to circle the pot or grow out of the drainage hole.",
    "The city council approved the new bicycle plan on Tuesday by a vote of seven to two. The plan adds "
    "protected lanes on four main streets, doubles the number of public bike racks, and sets aside funds for a "
    "repair station near the central library. Construction will start in the spring and is expected to finish "
    "within eighteen months, according to the transport department. Two council members voted against the plan, "
    "saying that parking on the affected streets would fall by a third. The department will publish a map of "
    "the new lanes next week and hold three public meetings before the work begins.",
)
TASKS = (
    "Copy the following passage exactly, word for word:\n\n{p}",
    "Fix the spelling mistakes in the following passage and return the whole corrected passage:\n\n{p}",
    "Rewrite the following passage, keeping every sentence and fact:\n\n{p}",
    "Extract every sentence of this passage, one per line:\n\n{p}",
)


def workload(num_prompts: int) -> list[list[dict[str, str]]]:
    """``num_prompts`` chat requests, each a task over one of the passages."""
    return [[{"role": "user", "content": TASKS[i % len(TASKS)].format(p=PASSAGES[(i + i // len(TASKS)) % len(PASSAGES)])}]
            for i in range(num_prompts)]


async def _stream_chat(client: httpx.AsyncClient, messages: list[dict], max_tokens: int, spec_tokens: int) -> tuple[str, float]:
    """One greedy streamed chat request; returns its text and TPOT in ms."""
    body = {"model": "base", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, "num_speculative_tokens": spec_tokens}
    timer, parts = StreamTimer(time.perf_counter()), []
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise StreamError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            timer.feed(line, time.perf_counter())
            if line.startswith("data: {") and '"content"' in line:
                for choice in json.loads(line[6:]).get("choices", []):
                    parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts), 1000 * timer.result(time.perf_counter()).tpot_s


def _spec_counters(base_url: str) -> tuple[float, float]:
    """(draft tokens, accepted tokens) from the server's Prometheus counters."""
    values = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        for name in ("vllm:spec_decode_num_draft_tokens_total", "vllm:spec_decode_num_accepted_tokens_total"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["vllm:spec_decode_num_draft_tokens_total"], values["vllm:spec_decode_num_accepted_tokens_total"]


async def _measure(base_url: str, cfg: SpecBenchConfig, progress: Progress) -> dict:
    prompts = workload(cfg.num_prompts)
    task = progress.add_task("off/on pairs", total=len(prompts) * cfg.repeats)
    per_prompt, identical = [], True
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0)) as client:
        for messages in prompts:  # warm-up: kernels and allocator, and each prompt's blocks in the prefix cache
            await _stream_chat(client, messages, 8, 0)
        await _stream_chat(client, prompts[0], 8, cfg.num_speculative_tokens)
        drafted0, accepted0 = _spec_counters(base_url)
        for messages in prompts:
            off, on, texts = [], [], set()
            for _ in range(cfg.repeats):
                text_off, tpot_off = await _stream_chat(client, messages, cfg.output_tokens, 0)
                text_on, tpot_on = await _stream_chat(client, messages, cfg.output_tokens, cfg.num_speculative_tokens)
                off.append(tpot_off)
                on.append(tpot_on)
                texts.update((text_off, text_on))
                progress.advance(task)
            identical &= len(texts) == 1
            per_prompt.append({"task": messages[0]["content"][:60], "tpot_ms_off": off, "tpot_ms_on": on,
                               "identical": len(texts) == 1, "output_chars": len(text_off)})
    drafted, accepted = _spec_counters(base_url)
    return {"per_prompt": per_prompt, "identical": identical, "draft_tokens": drafted - drafted0,
            "accepted_tokens": accepted - accepted0}


def run(cfg: SpecBenchConfig) -> dict:
    """Run the benchmark, print the figures and write ``cfg.json_path``. Returns the results."""
    base = resolve_model(cfg.model)
    console = Console(stderr=True)
    argv = [sys.executable, "-m", "lorafleet.cli", "serve", "--model", str(base), "--port", "{port}", "--dtype", cfg.dtype,
            "--served-model-name", "base", "--max-loras", "0", "--max-model-len", "2048", *cfg.engine_args]
    if cfg.num_threads:
        argv += ["--num-threads", str(cfg.num_threads)]
    log = lorafleet_home() / "bench" / "logs" / "spec.log"
    console.print(f"starting lorafleet serve ({cfg.dtype}); log: {log}")
    with ManagedServer(ServerSpec("lorafleet", argv, {}, log)) as server, \
            Progress(console=console, transient=True) as progress:
        measured = asyncio.run(_measure(server.base_url, cfg, progress))
    results = summarise(cfg, measured)
    write_json(cfg.json_path, results)
    s = results["spec"]
    console.print(f"TPOT off {s['tpot_ms_off']:.1f} ms, on {s['tpot_ms_on']:.1f} ms "
                  f"({s['tpot_ms_on'] / s['tpot_ms_off']:.2f}x), acceptance {s['acceptance_rate']:.2f}, "
                  f"identical {s['identical']}")
    print_targets(console, results["targets"])
    return results


def summarise(cfg: SpecBenchConfig, measured: dict) -> dict:
    """The results file: the issue's ``spec`` figures, targets, per-prompt details and the setting."""
    off = statistics.median(t for p in measured["per_prompt"] for t in p["tpot_ms_off"])
    on = statistics.median(t for p in measured["per_prompt"] for t in p["tpot_ms_on"])
    drafted = measured["draft_tokens"]
    rate = measured["accepted_tokens"] / drafted if drafted else 0.0
    spec = {"tpot_ms_off": off, "tpot_ms_on": on, "acceptance_rate": rate, "identical": measured["identical"]}
    return {
        "spec": spec,
        "targets": {
            "tpot": target(f"tpot_ms_on <= {SPEC_TPOT_TARGET_RATIO} x tpot_ms_off", on <= SPEC_TPOT_TARGET_RATIO * off),
            "identical": target("greedy outputs identical with speculation on and off", measured["identical"]),
        },
        "details": {"tpot_ratio": on / off, "draft_tokens": drafted, "accepted_tokens": measured["accepted_tokens"],
                    "per_prompt": measured["per_prompt"]},
        "cpu": cpu_info(),
        "versions": versions("lorafleet", "torch", "transformers"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
