"""``lorafleet optimize ...`` and ``lorafleet eval ...``: quantization, pruning, KV scales, templates, quality.

Commands are registered on the typer apps of :mod:`lorafleet.cli` when this module is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from lorafleet.atomic import write_json
from lorafleet.cli import _help, app, bench_app, build, call, opt, optimize_app
from lorafleet.config.optimize import (CalibConfig, EvalConfig, KVQuantConfig, OptimizeBenchConfig, PruneConfig,
                                       QuantConfig)

eval_app = typer.Typer(help="Quality of checkpoints on held-out text: perplexity, comparisons.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

MODEL_ARG = typer.Argument(..., help="Input HF checkpoint: provisioned model name or directory (never modified).")


def _calib(calib_data: Optional[Path], num_calib_samples: int, max_seq_len: int) -> CalibConfig:
    return build(CalibConfig, calib_data=calib_data, num_calib_samples=num_calib_samples, max_seq_len=max_seq_len)


def _show(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for k, v in rows.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


# -- optimize ------------------------------------------------------------------------------------------------
@optimize_app.command("quantize")
def quantize(
    model: str = MODEL_ARG,
    out: Path = typer.Option(..., "--out", help=_help(QuantConfig, "out")),
    scheme: str = opt(QuantConfig, "scheme"),
    group_size: Optional[int] = opt(QuantConfig, "group_size"),
    smoothing_strength: float = opt(QuantConfig, "smoothing_strength"),
    keep_bf16_share: float = opt(QuantConfig, "keep_bf16_share"),
    nf4_rounding: str = opt(QuantConfig, "nf4_rounding"),
    calib_data: Optional[Path] = opt(CalibConfig, "calib_data"),
    num_calib_samples: int = opt(CalibConfig, "num_calib_samples"),
    max_seq_len: int = opt(CalibConfig, "max_seq_len"),
    llmc_python: str = opt(QuantConfig, "llmc_python"),
    force: bool = opt(QuantConfig, "force"),
) -> None:
    """Weight quantization: int8 / nf4 (bitsandbytes), w4a16 / w8a8 (llm-compressor, for vLLM), int8-engine."""
    cfg = build(QuantConfig, model=model, out=out, scheme=scheme, group_size=group_size,
                smoothing_strength=smoothing_strength, keep_bf16_share=keep_bf16_share, nf4_rounding=nf4_rounding,
                calib=_calib(calib_data, num_calib_samples, max_seq_len),
                llmc_python=llmc_python, force=force)
    r = call("optimize.quantize:run", cfg)
    _show(f"quantize {scheme} → {r['path']}", {k: r[k] for k in ("checkpoint_bytes", "base_checkpoint_bytes", "linear_bytes",
                                                                  "linear_share_of_bf16", "seconds")})


@optimize_app.command("kv")
def kv(
    model: str = MODEL_ARG,
    out: Path = typer.Option(..., "--out", help=_help(KVQuantConfig, "out")),
    calib_data: Optional[Path] = opt(CalibConfig, "calib_data"),
    num_calib_samples: int = opt(CalibConfig, "num_calib_samples"),
    max_seq_len: int = opt(CalibConfig, "max_seq_len"),
    margin: float = opt(KVQuantConfig, "margin"),
    force: bool = opt(KVQuantConfig, "force"),
) -> None:
    """Calibrate per-layer / per-KV-head K and V scales; write them as vLLM reads them (fp8 k_scale/v_scale +
    kv_cache_scheme) and for `lorafleet serve --kv-cache-dtype int8|fp8` (kv_scales.json)."""
    cfg = build(KVQuantConfig, model=model, out=out, calib=_calib(calib_data, num_calib_samples, max_seq_len),
                margin=margin, force=force)
    r = call("optimize.kv:run", cfg)
    cap = r["capacity"]
    _show(f"kv scales → {r['path']}", {"tokens per GiB (bfloat16)": cap["tokens"]["bfloat16"],
                                        "tokens per GiB (int8/fp8)": cap["tokens"]["int8"],
                                        "capacity gain vs bfloat16": cap["gain_vs_bfloat16"],
                                        "capacity gain vs float32": cap["gain_vs_float32"], "seconds": r["seconds"]})


@optimize_app.command("prune")
def prune(
    model: str = MODEL_ARG,
    out: Path = typer.Option(..., "--out", help=_help(PruneConfig, "out")),
    kind: str = opt(PruneConfig, "kind"),
    ratio: float = opt(PruneConfig, "ratio"),
    head_ratio: float = opt(PruneConfig, "head_ratio"),
    protect: list[int] = typer.Option([], "--protect", help=_help(PruneConfig, "protect") + " (repeatable)"),
    calib_data: Optional[Path] = opt(CalibConfig, "calib_data"),
    num_calib_samples: int = opt(CalibConfig, "num_calib_samples"),
    max_seq_len: int = opt(CalibConfig, "max_seq_len"),
    heal_steps: int = opt(PruneConfig, "heal_steps"),
    heal_data: Optional[Path] = opt(PruneConfig, "heal_data"),
    heal_loss: str = opt(PruneConfig, "heal_loss"),
    heal_samples: int = opt(PruneConfig, "heal_samples"),
    force: bool = opt(PruneConfig, "force"),
) -> None:
    """Structured pruning (depth: whole layers; width: FFN channels and KV groups) into a smaller dense
    checkpoint, optionally healed by a short LoRA fine-tune (lorafleet train sft + merge)."""
    cfg = build(PruneConfig, model=model, out=out, kind=kind, ratio=ratio, head_ratio=head_ratio, protect=tuple(protect),
                calib=_calib(calib_data, num_calib_samples, max_seq_len), heal_steps=heal_steps, heal_data=heal_data,
                heal_loss=heal_loss, heal_samples=heal_samples, force=force)
    r = call("optimize.prune:run", cfg)
    rows = {"params before": r["params"]["before"], "params after": r["params"]["after"],
            "layers": " → ".join(map(str, r["num_layers"])), "seconds": r["seconds"]}
    if "dropped_layers" in r:
        rows["dropped layers"] = r["dropped_layers"]
    if "intermediate_size" in r:
        rows["FFN width"] = " → ".join(map(str, r["intermediate_size"]))
    _show(f"prune {kind} → {r['path']}", rows)


# -- eval ----------------------------------------------------------------------------------------------------
def _eval_cfg(**kw: Any) -> EvalConfig:
    return build(EvalConfig, **kw)


@eval_app.command("ppl")
def eval_ppl(
    model: str = typer.Argument(..., help="Checkpoint: provisioned model name or directory."),
    data: Optional[Path] = opt(EvalConfig, "data"),
    backend: str = opt(EvalConfig, "backend"),
    window_tokens: int = opt(EvalConfig, "window_tokens"),
    dtype: str = opt(EvalConfig, "dtype"),
    kv_cache_dtype: str = opt(EvalConfig, "kv_cache_dtype"),
    vllm_python: str = opt(EvalConfig, "vllm_python"),
    num_threads: Optional[int] = opt(EvalConfig, "num_threads"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
) -> None:
    """Perplexity of MODEL on held-out text (default: the set shipped in optimize/data)."""
    cfg = _eval_cfg(data=data, backend=backend, window_tokens=window_tokens, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
                    vllm_python=vllm_python, num_threads=num_threads)
    r = call("optimize.ppl:evaluate", model, cfg).summary()
    if json_path is not None:
        write_json(json_path, r)
    _show(f"perplexity of {model}", r)


@eval_app.command("compare")
def eval_compare(
    a: str = typer.Argument(..., help="Reference checkpoint (e.g. the base)."),
    b: str = typer.Argument(..., help="Checkpoint to compare against A (e.g. an optimized one)."),
    data: Optional[Path] = opt(EvalConfig, "data"),
    backend: str = opt(EvalConfig, "backend"),
    window_tokens: int = opt(EvalConfig, "window_tokens"),
    dtype: str = opt(EvalConfig, "dtype"),
    kv_cache_dtype: str = opt(EvalConfig, "kv_cache_dtype"),
    decode_tokens: int = opt(EvalConfig, "decode_tokens"),
    vllm_python: str = opt(EvalConfig, "vllm_python"),
    num_threads: Optional[int] = opt(EvalConfig, "num_threads"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
) -> None:
    """B against A: ppl delta, greedy next-token agreement, size on disk, decode speed on our engine."""
    cfg = _eval_cfg(data=data, backend=backend, window_tokens=window_tokens, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
                    decode_tokens=decode_tokens, vllm_python=vllm_python, num_threads=num_threads)
    r = call("optimize.compare:compare", a, b, cfg)
    if json_path is not None:
        write_json(json_path, r)
    _show(f"{b} vs {a}", {"ppl A": r["a"]["ppl"], "ppl B": r["b"]["ppl"], "ppl delta %": r["ppl_delta_pct"],
                          "greedy agreement": r["greedy_agreement"], "bytes A": r["a"]["bytes"], "bytes B": r["b"]["bytes"],
                          "decode ms/token A": r["a"]["decode_tpot_ms"], "decode ms/token B": r["b"]["decode_tpot_ms"],
                          "decode speedup": r["decode_speedup"]})


# -- bench ---------------------------------------------------------------------------------------------------
@bench_app.command("optimize")
def bench_optimize(
    json_path: Path = typer.Option(..., "--json", help=_help(OptimizeBenchConfig, "json_path")),
    model: str = opt(OptimizeBenchConfig, "model"),
    work_dir: Optional[Path] = opt(OptimizeBenchConfig, "work_dir"),
    heal_steps: int = opt(OptimizeBenchConfig, "heal_steps"),
    decode_tokens: int = opt(OptimizeBenchConfig, "decode_tokens"),
    skip_vllm: bool = opt(OptimizeBenchConfig, "skip_vllm"),
    reuse: bool = opt(OptimizeBenchConfig, "reuse", "--reuse/--fresh"),
    vllm_python: str = opt(OptimizeBenchConfig, "vllm_python"),
    llmc_python: str = opt(OptimizeBenchConfig, "llmc_python"),
) -> None:
    """Every quantization scheme, int8/fp8 KV and depth/width pruning of one base, measured in one run."""
    cfg = build(OptimizeBenchConfig, json_path=json_path, model=model, work_dir=work_dir, heal_steps=heal_steps,
                decode_tokens=decode_tokens, skip_vllm=skip_vllm, reuse=reuse, vllm_python=vllm_python, llmc_python=llmc_python)
    call("bench.optimize:run", cfg)
