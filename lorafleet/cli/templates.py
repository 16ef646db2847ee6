"""``lorafleet optimize templates lint|compile|report`` and ``lorafleet bench templates``: prefix-cache-aware
prompt templates.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorafleet.cli import _help, bench_app, build, call, opt, optimize_app
from lorafleet.config.templates import (TemplateBenchConfig, TemplateCompileConfig, TemplateLintConfig,
                                        TemplateReportConfig)

templates_app = typer.Typer(help="Prefix-cache-aware prompt templates: lint, compile, report (docs/templates.md).",
                            no_args_is_help=True)
optimize_app.add_typer(templates_app, name="templates")

_PATHS = typer.Argument(..., help="Template YAML files.", show_default=False)


@templates_app.command("lint", short_help="Find cache-busting patterns, each with its line and a fix.", help=(
    "Find cache-busting patterns, each with its line and a suggested fix: volatile values or per-request content in "
    "static sections, per-request sections before static ones, non-canonical JSON, and chat templates that inject "
    "the date. Exits 1 when there are errors (or warnings, with --strict)."))
def lint(
    paths: list[Path] = _PATHS,
    model: str = opt(TemplateLintConfig, "model"),
    chat_template: Optional[Path] = opt(TemplateLintConfig, "chat_template"),
    no_model: bool = opt(TemplateLintConfig, "no_model"),
    strict: bool = opt(TemplateLintConfig, "strict"),
    json_path: Optional[Path] = typer.Option(None, "--json", help=_help(TemplateLintConfig, "json_path")),
) -> None:
    cfg = build(TemplateLintConfig, paths=tuple(paths), model=model, chat_template=chat_template, no_model=no_model,
                strict=strict, json_path=json_path)
    _, ok = call("optimize.templates.commands:run_lint", cfg)
    if not ok:
        raise typer.Exit(1)


@templates_app.command("compile", short_help="Pre-tokenize and check static prefixes; write OUT/<name>/.", help=(
    "Pre-tokenize each template's static prefix, check that it tokenizes the same inside full prompts, report how "
    "it fits the target's KV blocks, and write OUT/<name>/ (manifest.json + template.yaml) for the gateway's "
    "`templates:` list. --reorder moves per-request sections after static ones where safe."))
def compile_(
    paths: list[Path] = _PATHS,
    out_dir: Path = opt(TemplateCompileConfig, "out_dir", "--out"),
    model: str = opt(TemplateCompileConfig, "model"),
    chat_template: Optional[Path] = opt(TemplateCompileConfig, "chat_template"),
    block_size: int = opt(TemplateCompileConfig, "block_size"),
    block_size_from: Optional[str] = opt(TemplateCompileConfig, "block_size_from"),
    reorder: bool = opt(TemplateCompileConfig, "reorder"),
    pad_to_block: bool = opt(TemplateCompileConfig, "pad_to_block"),
    num_samples: int = opt(TemplateCompileConfig, "num_samples"),
) -> None:
    cfg = build(TemplateCompileConfig, paths=tuple(paths), out_dir=out_dir, model=model, chat_template=chat_template,
                block_size=block_size, block_size_from=block_size_from, reorder=reorder, pad_to_block=pad_to_block,
                num_samples=num_samples)
    for path in call("optimize.templates.commands:run_compile", cfg):
        typer.echo(str(path))


@templates_app.command("report", short_help="Estimate the prefix-cache hit rate before and after compiling.", help=(
    "Estimate the prefix-cache hit rate (reused tokens / prompt tokens) of a JSONL sample of requests before and "
    "after compiling, by replaying their prompts through a model of an engine's block cache."))
def report(
    paths: list[Path] = _PATHS,
    requests: Path = typer.Option(..., "--requests", help=_help(TemplateReportConfig, "requests")),
    model: str = opt(TemplateReportConfig, "model"),
    chat_template: Optional[Path] = opt(TemplateReportConfig, "chat_template"),
    block_size: int = opt(TemplateReportConfig, "block_size"),
    block_size_from: Optional[str] = opt(TemplateReportConfig, "block_size_from"),
    reorder: bool = opt(TemplateReportConfig, "reorder"),
    pad_to_block: bool = opt(TemplateReportConfig, "pad_to_block"),
    capacity_blocks: Optional[int] = opt(TemplateReportConfig, "capacity_blocks"),
    json_path: Optional[Path] = typer.Option(None, "--json", help=_help(TemplateReportConfig, "json_path")),
) -> None:
    cfg = build(TemplateReportConfig, paths=tuple(paths), requests=requests, model=model, chat_template=chat_template,
                block_size=block_size, block_size_from=block_size_from, reorder=reorder, pad_to_block=pad_to_block,
                capacity_blocks=capacity_blocks, json_path=json_path)
    call("optimize.templates.commands:run_report", cfg)


@bench_app.command("templates", short_help="Naive vs compiled prompt templates: hit rate and TTFT.", help=(
    "Naive vs compiled prompt templates on our engine and vLLM-CPU: 4 templates whose naive form puts a timestamp "
    "first and the question before the few-shot examples; prefix-cache hit rate from each engine's own metrics and "
    "mean TTFT, written to --json."))
def bench_templates(
    json_path: Path = typer.Option(..., "--json", help=_help(TemplateBenchConfig, "json_path")),
    model: str = opt(TemplateBenchConfig, "model"),
    num_requests: int = opt(TemplateBenchConfig, "num_requests"),
    max_tokens: int = opt(TemplateBenchConfig, "max_tokens"),
    concurrency: int = opt(TemplateBenchConfig, "concurrency"),
    seed: int = opt(TemplateBenchConfig, "seed"),
    dtype: str = opt(TemplateBenchConfig, "dtype"),
    vllm_python: str = opt(TemplateBenchConfig, "vllm_python"),
    vllm_kv_gb: int = opt(TemplateBenchConfig, "vllm_kv_gb"),
    engine_arg: list[str] = typer.Option([], "--engine-arg", help=_help(TemplateBenchConfig, "engine_args") + " (repeatable)"),
) -> None:
    cfg = build(TemplateBenchConfig, json_path=json_path, model=model, num_requests=num_requests, max_tokens=max_tokens,
                concurrency=concurrency, seed=seed, dtype=dtype, vllm_python=vllm_python, vllm_kv_gb=vllm_kv_gb,
                engine_args=tuple(engine_arg))
    call("bench.templates:run", cfg)
