"""``lorafleet profile ...``: memory planning and backend launch profiles.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
``profile render`` is the interface deploy/ builds container arguments with; its ``--format json`` output is
stable (see docs/bench.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorafleet.cli import _default, _help, app, build, call, opt
from lorafleet.cli.load import levels, parsed
from lorafleet.config.load import SweepConfig, parse_duration_s, parse_slo
from lorafleet.config.profile import BACKENDS, PlanConfig, normalize_dtype, parse_bytes

profile_app = typer.Typer(help="Memory planner and engine launch profiles (vLLM, SGLang, TensorRT-LLM, our engine).",
                          no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("plan")
def profile_plan(
    model: str = typer.Option(..., help=_help(PlanConfig, "model")),
    gpu_mem: str = typer.Option(..., help=_help(PlanConfig, "gpu_mem_bytes")),
    gpu_memory_utilization: float = opt(PlanConfig, "gpu_memory_utilization"),
    weight_dtype: str = opt(PlanConfig, "weight_dtype"),
    kv_dtype: str = opt(PlanConfig, "kv_dtype"),
    max_model_len: Optional[int] = opt(PlanConfig, "max_model_len"),
    lora_slots: int = opt(PlanConfig, "lora_slots"),
    lora_rank: int = opt(PlanConfig, "lora_rank"),
    max_num_seqs: Optional[int] = opt(PlanConfig, "max_num_seqs"),
    max_num_batched_tokens: Optional[int] = opt(PlanConfig, "max_num_batched_tokens"),
    avg_seq_len: Optional[int] = opt(PlanConfig, "avg_seq_len"),
    runtime_reserve: str = typer.Option("1GiB", help=_help(PlanConfig, "runtime_reserve_bytes")),
    tensor_parallel_size: int = opt(PlanConfig, "tensor_parallel_size"),
    block_size: int = opt(PlanConfig, "block_size"),
    enable_chunked_prefill: bool = opt(PlanConfig, "enable_chunked_prefill",
                                       "--enable-chunked-prefill/--no-enable-chunked-prefill"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the plan as JSON here."),
    write_profile: Optional[Path] = typer.Option(None, help="Write a profile YAML with the recommended settings here."),
) -> None:
    """Memory budget of one GPU: weights, KV bytes/token, LoRA slots, activations; KV tokens that fit; batch limits."""
    cfg = build(PlanConfig, model=model, gpu_mem_bytes=parsed(parse_bytes, gpu_mem, "--gpu-mem"),
                gpu_memory_utilization=gpu_memory_utilization, weight_dtype=normalize_dtype(weight_dtype),
                kv_dtype=normalize_dtype(kv_dtype), max_model_len=max_model_len, lora_slots=lora_slots, lora_rank=lora_rank,
                max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, avg_seq_len=avg_seq_len,
                runtime_reserve_bytes=parsed(parse_bytes, runtime_reserve, "--runtime-reserve"),
                tensor_parallel_size=tensor_parallel_size, block_size=block_size,
                enable_chunked_prefill=enable_chunked_prefill)
    call("bench.profiles.plan_cli:run", cfg, json_path=json_path, profile_path=write_profile)


@profile_app.command("render")
def profile_render(
    profile: str = typer.Argument(..., help="Shipped profile name or path to a profile YAML."),
    backend: str = typer.Option(..., help=f"Engine to launch: {' | '.join(BACKENDS)}."),
    model: str = typer.Option(..., help="Model as the engine will see it (path inside the container, or a name)."),
    host: Optional[str] = typer.Option(None, help="Address the engine binds (omitted: the engine's default)."),
    port: Optional[str] = typer.Option(None, help="Port the engine binds (omitted: the engine's default)."),
    served_model_name: Optional[str] = typer.Option(None, help="Model id clients use (omitted: the engine's default)."),
    fmt: str = typer.Option("shell", "--format", help="shell (runnable script) | json (command, args, env, files) | args."),
    files_dir: str = typer.Option(".", help="Where extra config files (TensorRT-LLM options YAML) will live."),
) -> None:
    """Print the exact launch command of PROFILE for one backend."""
    call("bench.profiles.render:render_cli", profile, backend=backend, model=model, host=host, port=port,
         served_model_name=served_model_name, fmt=fmt, files_dir=files_dir)


@profile_app.command("list")
def profile_list() -> None:
    """Show the shipped profiles and their settings."""
    call("bench.profiles.store:list_cli")


@profile_app.command("tune")
def profile_tune(
    backend_cmd: str = typer.Option(..., help=_help(SweepConfig, "backend_cmd")),
    slo: str = typer.Option(..., help=_help(SweepConfig, "slo")),
    out: Path = typer.Option(..., "--out", help="Directory for winner.yaml, tune.json (the evidence), runs and logs."),
    backend: str = opt(SweepConfig, "backend"),
    profile: list[str] = typer.Option([], "--profile", help="Candidate profile, name or YAML (repeatable; default: all shipped)."),
    workload: str = opt(SweepConfig, "workload"),
    users: str = typer.Option(",".join(map(str, _default(SweepConfig, "users"))), help=_help(SweepConfig, "users")),
    duration: str = typer.Option(f"{_default(SweepConfig, 'duration_s'):g}s", help=_help(SweepConfig, "duration_s")),
    warmup: str = typer.Option("0s", help=_help(SweepConfig, "warmup_s")),
    model: Optional[str] = opt(SweepConfig, "model"),
    api_key: Optional[str] = typer.Option(None, envvar="LORAFLEET_API_KEY", help=_help(SweepConfig, "api_key")),
    start_timeout: str = typer.Option(f"{_default(SweepConfig, 'start_timeout_s'):g}s", help=_help(SweepConfig, "start_timeout_s")),
) -> None:
    """Launch the backend with each candidate profile, sweep the load, and save the best setting meeting --slo."""
    if not profile:
        from bench.profiles.store import shipped_profile_names

        profile = shipped_profile_names()
    cfg = build(SweepConfig, out_dir=out, workload=workload, users=parsed(levels, users, "--users"),
                duration_s=parsed(parse_duration_s, duration, "--duration"),
                warmup_s=parsed(parse_duration_s, warmup, "--warmup"), slo=parsed(parse_slo, slo, "--slo"),
                profiles=tuple(profile), backend=backend, backend_cmd=backend_cmd, model=model, api_key=api_key,
                start_timeout_s=parsed(parse_duration_s, start_timeout, "--start-timeout"))
    call("bench.profiles.tune:run_cli", cfg)
