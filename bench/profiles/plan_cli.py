"""``lorafleet profile plan``: read the model's shape, plan one GPU's memory, print it, optionally save it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.profiles.planner import MemoryPlan, plan_memory
from bench.profiles.shapes import read_shape
from lorafleet.atomic import write_json
from lorafleet.config.profile import PlanConfig, Profile
from lorafleet.errors import ConfigError


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"


def plan_table(plan: MemoryPlan, cfg: PlanConfig) -> Table:
    tp = f" (per GPU, TP={plan.tensor_parallel_size})" if plan.tensor_parallel_size > 1 else ""
    table = Table(title=f"memory plan: {cfg.model}{tp}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_column(justify="left", style="dim")
    rows = [
        ("budget", _gib(plan.budget_bytes), f"{_gib(cfg.gpu_mem_bytes)} x {cfg.gpu_memory_utilization:g}"),
        ("weights", _gib(plan.weight_bytes), f"{plan.num_params / 1e9:.3f} B params, {plan.weight_dtype} "
                                             f"(embeddings/norms {plan.activation_dtype})"),
        ("LoRA slots", _gib(plan.lora_bytes), f"{cfg.lora_slots} x rank {cfg.lora_rank}, {plan.activation_dtype}"),
        ("activations", _gib(plan.activation_bytes), f"{plan.max_num_batched_tokens} batched tokens, logits"),
        ("runtime reserve", _gib(plan.runtime_reserve_bytes), "CUDA context, allocator slack, graphs"),
        ("KV cache", _gib(plan.kv_cache_bytes), f"{plan.kv_dtype}"),
        ("KV bytes / token", f"{plan.kv_bytes_per_token:,}", "2 x layers x kv_heads x head_dim x bytes"),
        ("KV tokens that fit", f"{plan.kv_tokens:,}", f"{plan.kv_blocks:,} blocks of {cfg.block_size}"),
        (f"{plan.max_model_len}-token sequences", f"{plan.full_length_seqs:,.1f}", "at full context at once"),
        ("max_num_seqs", str(plan.max_num_seqs), "recommended" if cfg.max_num_seqs is None else "given"),
        ("max_num_batched_tokens", str(plan.max_num_batched_tokens),
         "recommended" if cfg.max_num_batched_tokens is None else "given"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def plan_profile(plan: MemoryPlan, cfg: PlanConfig, name: str) -> Profile:
    """A profile carrying the plan's recommendations."""
    return Profile(name=name, description=f"planned for {cfg.model} on {_gib(cfg.gpu_mem_bytes)}",
                   max_num_seqs=plan.max_num_seqs, max_num_batched_tokens=plan.max_num_batched_tokens,
                   max_model_len=plan.max_model_len, kv_cache_dtype=plan.kv_dtype,
                   enable_chunked_prefill=cfg.enable_chunked_prefill, max_loras=cfg.lora_slots,
                   max_lora_rank=cfg.lora_rank, gpu_memory_utilization=cfg.gpu_memory_utilization,
                   tensor_parallel_size=cfg.tensor_parallel_size)


def run(cfg: PlanConfig, json_path: Path | None = None, profile_path: Path | None = None) -> MemoryPlan:
    plan = plan_memory(read_shape(cfg.model), cfg)
    console = Console()
    console.print(plan_table(plan, cfg))
    if json_path:
        write_json(json_path, {"config": dataclasses.asdict(cfg), "plan": {**dataclasses.asdict(plan), "fits": plan.fits}})
    if profile_path:
        if not plan.fits:
            raise ConfigError("not writing a profile for a plan that does not fit")
        from bench.profiles.store import save_profile

        save_profile(plan_profile(plan, cfg, Path(profile_path).stem), Path(profile_path))
        console.print(f"profile written to {profile_path}")
    if not plan.fits:
        raise ConfigError("does not fit: " + "; ".join(plan.problems))
    return plan
