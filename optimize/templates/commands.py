"""What ``lorafleet optimize templates lint|compile|report`` run: load, work, print (rich, on stderr for
progress and tables; findings on stdout), write JSON or artifacts. Each returns its results for Python callers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

from lorafleet.atomic import write_json
from lorafleet.config.templates import TemplateCompileConfig, TemplateLintConfig, TemplateReportConfig
from lorafleet.errors import ConfigError
from lorafleet.templates import load_template, write_compiled
from lorafleet.templates.prefix import encode, fetch_block_size, split_prompt
from optimize.templates.compile import CompileOptions, compile_template
from optimize.templates.lint import ERROR, Finding, lint_template
from optimize.templates.report import BlockCache, HitStats, read_requests


def load_tokenizer_for(model: str, chat_template: Path | None) -> tuple[Any, str]:
    """The model's tokenizer (with ``chat_template`` swapped in, if given) and a label for its chat template."""
    from lorafleet.loading import load_tokenizer, resolve_model

    path = resolve_model(model)
    tokenizer = load_tokenizer(path)
    origin = f"{path}/tokenizer_config.json (chat_template)"
    if chat_template is not None:
        try:
            tokenizer.chat_template = Path(chat_template).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read chat template {chat_template}: {e.strerror}") from None
        origin = str(chat_template)
    return tokenizer, origin


# -- lint ---------------------------------------------------------------------------------------------------
def run_lint(cfg: TemplateLintConfig) -> tuple[list[Finding], bool]:
    """Lint every file; print findings. Returns them and whether the run passes (no errors; no warnings
    either with ``strict``)."""
    from optimize.templates.chat_lint import lint_chat_template

    console = Console(stderr=True)
    tokenizer, origin = (None, "") if cfg.no_model else load_tokenizer_for(cfg.model, cfg.chat_template)
    findings: list[Finding] = []
    for path in cfg.paths:
        template = load_template(path)
        found = lint_template(template)
        if tokenizer is not None:
            found += lint_chat_template(template, tokenizer, origin)
        findings += found
        for f in found:
            print(f.format())
        mark = "[green]clean[/]" if not found else f"[red]{len(found)} finding(s)[/]"
        console.print(f"{path}: {mark}")
    if cfg.json_path:
        write_json(cfg.json_path, [{"file": f.file, "line": f.line, "code": f.code, "severity": f.severity,
                                     "section": f.section, "message": f.message, "fix": f.fix} for f in findings])
    failing = [f for f in findings if f.severity == ERROR or cfg.strict]
    return findings, not failing


# -- compile ------------------------------------------------------------------------------------------------
def run_compile(cfg: TemplateCompileConfig) -> list[Path]:
    """Compile every file into ``cfg.out_dir/<name>``; print a summary table. Returns the directories."""
    console = Console(stderr=True)
    block_size = fetch_block_size(cfg.block_size_from) if cfg.block_size_from else cfg.block_size
    options = CompileOptions(block_size, cfg.reorder, cfg.pad_to_block, cfg.num_samples)
    templates = [load_template(p) for p in cfg.paths]
    names = [t.name for t in templates]
    if len(set(names)) != len(names):
        raise ConfigError(f"two templates share a name: {sorted(n for n in set(names) if names.count(n) > 1)}")
    tokenizer, _ = load_tokenizer_for(cfg.model, cfg.chat_template)
    table = Table(title=f"compiled templates (block size {block_size})")
    for col in ("template", "static tokens", "in full blocks", "wasted", "padded", "stable"):
        table.add_column(col)
    out = []
    with console.status("compiling") as status:
        for t in templates:
            status.update(f"compiling {t.name}")
            compiled = compile_template(t, tokenizer, cfg.model, options)
            out.append(write_compiled(compiled, Path(cfg.out_dir) / t.name))
            p = compiled.prefix
            table.add_row(t.name, str(p.num_tokens), str(p.num_cacheable_tokens), str(p.num_wasted_tokens),
                          str(p.num_pad_tokens), "yes" if not p.num_unstable_tokens else f"no ({p.num_unstable_tokens} dropped)")
            for change in compiled.changes:
                console.print(f"  {t.name}: {change}")
            for move in compiled.checks.get("reorder_suggested", []):
                console.print(f"  {t.name}: [yellow]would have {move}[/] (pass --reorder)")
            for why in compiled.checks.get("reorder_blocked", []):
                console.print(f"  {t.name}: [yellow]{why}[/]")
            if not compiled.checks["static_text_identical"]:
                console.print(f"  {t.name}: [red]static sections render differently per request (they use "
                              f"per-request variables; see lint): only {p.num_tokens} token(s) are shared[/]")
            elif p.num_unstable_tokens:
                console.print(f"  {t.name}: [yellow]the last {p.num_unstable_tokens} static token(s) tokenize "
                              f"differently inside full prompts ({compiled.checks['unstable_boundary']!r}); they are "
                              "not part of the compiled prefix[/]")
    console.print(table)
    return out


# -- report -------------------------------------------------------------------------------------------------
def run_report(cfg: TemplateReportConfig) -> dict[str, Any]:
    """Estimated hit rate of the requests before and after compiling, per template and overall."""
    console = Console(stderr=True)
    block_size = fetch_block_size(cfg.block_size_from) if cfg.block_size_from else cfg.block_size
    sources = {t.name: t for t in (load_template(p) for p in cfg.paths)}
    requests = read_requests(cfg.requests)
    unknown = sorted({r.template for r in requests} - set(sources))
    if unknown:
        raise ConfigError(f"{cfg.requests}: requests name unknown template(s) {unknown}; known: {sorted(sources)}")
    tokenizer, _ = load_tokenizer_for(cfg.model, cfg.chat_template)
    options = CompileOptions(block_size, cfg.reorder, cfg.pad_to_block)
    compiled = {n: compile_template(t, tokenizer, cfg.model, options).template for n, t in sources.items()}
    prompts: dict[str, list[tuple[str, list[int]]]] = {"before": [], "after": []}
    for req in track(requests, description="rendering requests", console=console):
        for phase, templates in (("before", sources), ("after", compiled)):
            try:
                text = split_prompt(tokenizer, templates[req.template], req.variables).full_text
            except ConfigError as e:
                raise ConfigError(f"{cfg.requests}:{req.line}: {e}") from None
            prompts[phase].append((req.template, encode(tokenizer, text)))
    result = _report(prompts, block_size, cfg.capacity_blocks)
    result["settings"] = {"block_size": block_size, "reorder": cfg.reorder, "pad_to_block": cfg.pad_to_block,
                          "capacity_blocks": cfg.capacity_blocks, "model": cfg.model, "requests": str(cfg.requests)}
    _print_report(console, result)
    if cfg.json_path:
        write_json(cfg.json_path, result)
    return result


def _report(prompts: dict[str, list[tuple[str, list[int]]]], block_size: int, capacity: int | None) -> dict[str, Any]:
    """Overall figures replay all requests through one cache (as one engine would see them); per-template
    figures are each template's share of that replay."""
    out: dict[str, Any] = {"templates": {}}
    for phase, items in prompts.items():
        overall, per = HitStats(), {}
        cache = BlockCache(block_size, capacity)
        for name, ids in items:
            stats = HitStats(len(ids), cache.serve(ids), 1)
            overall = overall + stats
            per[name] = per.get(name, HitStats()) + stats
        out[phase] = {"hit_rate": overall.hit_rate, "prompt_tokens": overall.num_prompt_tokens,
                      "hit_tokens": overall.num_hit_tokens, "requests": overall.num_requests}
        for name, stats in per.items():
            out["templates"].setdefault(name, {})[phase] = {"hit_rate": stats.hit_rate, "requests": stats.num_requests,
                                                            "prompt_tokens": stats.num_prompt_tokens}
    return out


def _print_report(console: Console, r: dict[str, Any]) -> None:
    table = Table(title=f"estimated prefix-cache hit rate (block size {r['settings']['block_size']})")
    for col in ("template", "requests", "before", "after"):
        table.add_column(col)
    for name, t in sorted(r["templates"].items()):
        table.add_row(name, str(t["before"]["requests"]), f"{t['before']['hit_rate']:.1%}", f"{t['after']['hit_rate']:.1%}")
    table.add_row("all", str(r["before"]["requests"]), f"{r['before']['hit_rate']:.1%}", f"{r['after']['hit_rate']:.1%}")
    console.print(table)
