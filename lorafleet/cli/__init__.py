"""The ``lorafleet`` command line: thin typer wrappers that parse flags into a config and call one library
function. Stage modules are imported only inside the command that needs them, so ``lorafleet --help``
loads neither torch nor any backend."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from lorafleet.config import API_KEY_ENV, EngineConfig, ServerConfig
from lorafleet.errors import LorafleetError

app = typer.Typer(help="lorafleet: train adapters, optimize checkpoints, serve multi-LoRA, benchmark.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Provision and list local models.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that write JSON results.", no_args_is_help=True)
app.add_typer(models_app, name="models")
optimize_app = typer.Typer(help="Make checkpoints cheaper to serve: quantization, KV scales, pruning, prompt templates.",
                            no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(optimize_app, name="optimize")


def _default(cls: type, name: str) -> Any:
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


def _help(cls: type, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("help", "")


def opt(cls: type, name: str, *flags: str, **kw: Any) -> Any:
    """A typer option whose default and help text come from the config dataclass (one source of defaults)."""
    return typer.Option(_default(cls, name), *flags, help=_help(cls, name), **kw)


def call(target: str, *args: Any, **kwargs: Any) -> Any:
    """Import ``"package.module:function"`` and call it; :class:`LorafleetError` becomes a one-line exit."""
    module, fn = target.split(":")
    try:
        func: Callable = getattr(importlib.import_module(module), fn)
        return func(*args, **kwargs)
    except LorafleetError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def build(cls: type, **values: Any) -> Any:
    try:
        return cls(**values)
    except LorafleetError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


# -- models --------------------------------------------------------------------------------------------------
@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="Model to provision, e.g. smollm2-135m-instruct."),
    dtype: str = typer.Option("float32", help="Dtype of the saved safetensors: float32 or bfloat16."),
    force: bool = typer.Option(False, help="Convert again even if the checkpoint exists."),
) -> None:
    """Convert a packaged GGUF model into an HF safetensors checkpoint under $LORAFLEET_HOME."""
    path = call("lorafleet.models:pull", name, dtype=dtype, force=force)
    typer.echo(str(path))


@models_app.command("list")
def models_list() -> None:
    """Show provisioned checkpoints and the models that can be pulled."""
    from rich.console import Console
    from rich.table import Table

    from lorafleet.config import models_dir
    from lorafleet.models import KNOWN_MODELS, list_models

    table = Table(title=f"models in {models_dir()}")
    for col in ("name", "dtype", "size", "path"):
        table.add_column(col)
    have = list_models()
    for m in have:
        table.add_row(m.name, m.dtype, f"{m.size_bytes / 2**20:.0f} MiB", str(m.path))
    for name in sorted(set(KNOWN_MODELS) - {m.name for m in have}):
        table.add_row(name, "-", "-", "(not pulled: lorafleet models pull " + name + ")")
    Console().print(table)


# -- serve ---------------------------------------------------------------------------------------------------
@app.command("serve")
def serve(
    model: str = typer.Option("smollm2-135m-instruct", help=_help(EngineConfig, "model")),
    host: str = opt(ServerConfig, "host"),
    port: int = opt(ServerConfig, "port"),
    served_model_name: Optional[str] = opt(ServerConfig, "served_model_name"),
    lora_modules: list[str] = typer.Option([], "--lora-module", help="Adapter to load at start, as NAME=PATH (repeatable)."),
    dtype: str = opt(EngineConfig, "dtype"),
    device: str = opt(EngineConfig, "device"),
    block_size: int = opt(EngineConfig, "block_size"),
    kv_cache_gb: float = opt(EngineConfig, "kv_cache_gb"),
    kv_cache_dtype: str = opt(EngineConfig, "kv_cache_dtype"),
    num_kv_blocks: Optional[int] = opt(EngineConfig, "num_kv_blocks"),
    max_num_seqs: int = opt(EngineConfig, "max_num_seqs"),
    max_num_batched_tokens: int = opt(EngineConfig, "max_num_batched_tokens"),
    max_model_len: Optional[int] = opt(EngineConfig, "max_model_len"),
    enable_prefix_caching: bool = opt(EngineConfig, "enable_prefix_caching", "--enable-prefix-caching/--no-enable-prefix-caching"),
    max_loras: int = opt(EngineConfig, "max_loras"),
    max_lora_rank: int = opt(EngineConfig, "max_lora_rank"),
    num_threads: Optional[int] = opt(EngineConfig, "num_threads"),
    onednn_cache_capacity: int = opt(EngineConfig, "onednn_cache_capacity"),
    seed: int = opt(EngineConfig, "seed"),
    num_speculative_tokens: int = opt(EngineConfig, "num_speculative_tokens"),
    prompt_lookup_max: int = opt(EngineConfig, "prompt_lookup_max"),
    prompt_lookup_min: int = opt(EngineConfig, "prompt_lookup_min"),
    log_level: str = opt(ServerConfig, "log_level"),
    api_key: Optional[str] = opt(ServerConfig, "api_key", envvar=API_KEY_ENV, show_envvar=False),
    allow_runtime_lora: list[str] = typer.Option([], "--allow-runtime-lora", metavar="ROOT",
                                                 help=_help(ServerConfig, "allowed_lora_roots") + " (repeatable)"),
    max_body_bytes: int = opt(ServerConfig, "max_body_bytes"),
) -> None:
    """Serve a model with the embedded engine behind an OpenAI-compatible API."""
    modules = []
    for item in lora_modules:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            typer.secho(f"error: --lora-module expects NAME=PATH, got '{item}'", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        modules.append((name, path))
    engine_cfg = build(EngineConfig, model=model, dtype=dtype, device=device, block_size=block_size, kv_cache_gb=kv_cache_gb,
                       kv_cache_dtype=kv_cache_dtype,
                       num_kv_blocks=num_kv_blocks, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                       max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching, max_loras=max_loras,
                       max_lora_rank=max_lora_rank, num_threads=num_threads,
                       onednn_cache_capacity=onednn_cache_capacity, seed=seed,
                       num_speculative_tokens=num_speculative_tokens, prompt_lookup_max=prompt_lookup_max,
                       prompt_lookup_min=prompt_lookup_min)
    server_cfg = build(ServerConfig, host=host, port=port, served_model_name=served_model_name,
                       lora_modules=tuple(modules), log_level=log_level, api_key=api_key,
                       allowed_lora_roots=tuple(allow_runtime_lora), max_body_bytes=max_body_bytes)
    call("serve.server.main:run", engine_cfg, server_cfg)


@app.command("gateway")
def gateway_command(  # (not `gateway`: that name is the submodule lorafleet.cli.gateway)
    config: Path = typer.Option(..., "--config", help="Gateway YAML config (backends, adapters, routing, auth, limits)."),
    host: Optional[str] = typer.Option(None, help="Address to bind; overrides server.host of the config."),
    port: Optional[int] = typer.Option(None, help="Port; overrides server.port of the config."),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Serve the multi-backend, multi-LoRA OpenAI gateway described by a YAML config."""
    call("serve.gateway.main:run", config, host=host, port=port, log_level=log_level)


# Command groups of the stages live in their own modules and register on the apps above when imported.
from lorafleet.cli import bench as _bench  # noqa: E402,F401  (bench engine)
from lorafleet.cli import deploy as _deploy  # noqa: E402,F401  (deployment manifests)
from lorafleet.cli import gateway as _gateway  # noqa: E402,F401  (bench routing / gateway)
from lorafleet.cli import load as _load  # noqa: E402,F401  (bench load / sweep)
from lorafleet.cli import optimize as _optimize  # noqa: E402,F401  (optimize quantize/kv/prune, eval)
from lorafleet.cli import profile as _profile  # noqa: E402,F401  (profile plan/render/tune)
from lorafleet.cli import soak as _soak  # noqa: E402,F401  (bench soak)
from lorafleet.cli import spec as _spec  # noqa: E402,F401  (bench spec)
from lorafleet.cli import templates as _templates  # noqa: E402,F401  (optimize templates)
from lorafleet.cli import train as _train  # noqa: E402,F401  (train sft/dpo, bench train)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

