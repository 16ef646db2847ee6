"""``lorafleet optimize quantize``: one checkpoint in, one weight-quantized checkpoint plus ``report.json`` out.

| scheme | how | loads in |
|---|---|---|
| ``int8`` | bitsandbytes LLM.int8() (8-bit rows, fp16 outlier columns) | transformers / PEFT |
| ``nf4`` | bitsandbytes NF4, double quantization, bf16 compute (the QLoRA base); codes chosen by GPTQ | transformers / PEFT |
| ``w4a16`` | GPTQ, 4-bit symmetric groups, llm-compressor → compressed-tensors | vLLM (and transformers) |
| ``w8a8`` | SmoothQuant + GPTQ, int8 channels × dynamic int8 tokens, llm-compressor | vLLM (and transformers) |
| ``int8-engine`` | int8 per output channel (:mod:`optimize.quant_math`), fp32 scales | lorafleet's engine |

llm-compressor pins its own transformers and compressed-tensors, so it runs in ``.venv-llmcompressor``
(``make llmcompressor-venv``) as ``optimize/llmc_quantize.py``. The tied embedding / LM head stays unquantized
in every scheme.
"""

from __future__ import annotations

import json
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

from lorafleet.atomic import atomic_dir, write_json
from lorafleet.config.optimize import QuantConfig
from lorafleet.errors import ArtifactError, BackendError, ConfigError
from optimize import artifact, quant_math
from optimize.ppl import ENGINE_QUANT_METHOD
from optimize.textdata import calibration_ids, calibration_texts

ROOT = Path(__file__).resolve().parents[1]
#: bitsandbytes NF4 block size (its default) and the GPTQ dampening used for NF4 rounding (10% of the mean
#: Hessian diagonal: the calibration set is small)
NF4_BLOCK = 64
GPTQ_DAMPENING = 0.1


def run(cfg: QuantConfig) -> dict[str, Any]:
    """Quantize ``cfg.model`` with ``cfg.scheme`` into ``cfg.out``; returns the report."""
    src, hf_cfg = artifact.resolve_input(cfg.model, f"quantize --scheme {cfg.scheme}")
    out = artifact.check_output(src, cfg.out, cfg.force)
    settings = artifact.jsonable(cfg)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        if cfg.scheme in ("int8", "nf4"):
            settings["kept_bf16_modules"] = _bitsandbytes(src, tmp, cfg)
        elif cfg.scheme == "int8-engine":
            _int8_engine(src, tmp, hf_cfg)
        else:
            settings["group_size"], settings["kept_bf16_modules"] = _llm_compressor(src, tmp, cfg, hf_cfg)
        artifact.copy_side_files(src, tmp)
        results = {"scheme": cfg.scheme, "seconds": round(time.perf_counter() - t0, 1), **size_facts(src, tmp)}
        report = artifact.write_report(tmp, "quantize", src, settings, results)
    return {**report, "path": str(out)}


def size_facts(src: Path, dst: Path) -> dict[str, Any]:
    """Whole-checkpoint bytes and the decoder linear layers' bytes against the same weights in bf16."""
    base_header = artifact.safetensors_header(src)
    sizes = quant_math.tensor_bytes(artifact.safetensors_header(dst))
    params = quant_math.linear_params(base_header)
    lin = quant_math.linear_bytes(sizes)
    return {"checkpoint_bytes": artifact.dir_bytes(dst), "base_checkpoint_bytes": artifact.dir_bytes(src),
            "linear_bytes": lin, "linear_bf16_bytes": 2 * params,
            "linear_share_of_bf16": round(quant_math.share_of_bf16(lin, params), 4)}


def calibration_statistics(model, tok, cfg: QuantConfig, names: list[str], hessians: bool, fisher: bool):
    """One pass over the calibration passages: for each linear module in ``names``, XᵀX of its inputs (for GPTQ)
    and/or the summed squared gradients of the LM loss with respect to its weight (the diagonal of the
    empirical Fisher, for ranking modules by how much their rounding costs the loss)."""
    import torch
    from rich.progress import track

    mods = dict(model.named_modules())
    h = {n: 0 for n in names} if hessians else {}
    f = {n: torch.zeros_like(mods[n].weight) for n in names} if fisher else {}

    def add_hessian(mod, args, n):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        h[n] = h[n] + x.T @ x

    hooks = [mods[n].register_forward_pre_hook(lambda mod, a, n=n: add_hessian(mod, a, n)) for n in h]
    model.requires_grad_(fisher)
    try:
        for ids in track(calibration_ids(tok, cfg.calib), description="calibration statistics", transient=True):
            if not fisher:
                with torch.inference_mode():
                    model(ids)
                continue
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
            for n in names:
                f[n] += mods[n].weight.grad.detach() ** 2
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
    return h, f


def nf4_round_trip(weight):
    """bitsandbytes' own NF4 quantization of ``weight`` (block 64, double-quantized absmax), dequantized."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weight, blocksize=NF4_BLOCK, quant_type="nf4", compress_statistics=True)
    return bnbf.dequantize_4bit(packed, state).to(weight.dtype)


def sensitive_modules(weights: dict, fisher: dict, share: float, round_trip: Callable = nf4_round_trip,
                      groups: list[list[str]] | None = None) -> list[str]:
    """Decoder linear modules holding at most ``share`` of the linear parameters whose rounding costs the loss
    most per parameter: Σ F ⊙ (W − Ŵ)² / numel, F = the empirical Fisher diagonal, Ŵ = ``round_trip(W)`` (the
    second-order estimate of the loss increase, as in SqueezeLLM). ``groups`` (default: one module each) are
    kept or quantized together, as fused modules must be. Picked greedily, best first."""
    groups = groups or [[n] for n in weights]
    err = {n: float((fisher[n] * (w - round_trip(w)) ** 2).sum()) for n, w in weights.items()}
    size = [sum(weights[n].numel() for n in g) for g in groups]
    score = [sum(err[n] for n in g) / sz for g, sz in zip(groups, size)]
    budget = share * sum(w.numel() for w in weights.values())
    kept, used = [], 0
    for i in sorted(range(len(groups)), key=score.__getitem__, reverse=True):
        if used + size[i] <= budget:
            kept += groups[i]
            used += size[i]
    return sorted(kept)


def _calibrate(src: Path, cfg: QuantConfig, hessians: bool) -> tuple[dict, dict, dict]:
    """The fp32 linear weights of ``src``, and from one calibration pass their input Hessians (if asked) and,
    with ``cfg.keep_bf16_share``, their Fisher diagonals."""
    import torch
    from transformers import AutoModelForCausalLM

    from lorafleet.loading import load_tokenizer

    fp = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    weights = {n: m.weight.detach() for n, m in fp.named_modules() if quant_math.LINEAR_RE.match(n + ".")}
    h, f = calibration_statistics(fp, load_tokenizer(src), cfg, list(weights), hessians, bool(cfg.keep_bf16_share))
    return weights, h, f


def _gptq_nf4(model, weights: dict, hessians: dict) -> None:
    """Replace the 4-bit codes of ``model``'s bitsandbytes NF4 linears with GPTQ's choice on the same grid and
    block scales (:func:`optimize.gptq_math.gptq_onto_grid`), from the unquantized ``weights`` and the
    calibration ``hessians``; the quant states (absmax, double quantization) stay bitsandbytes' own."""
    import bitsandbytes.functional as bnbf
    from rich.progress import track

    from optimize import gptq_math

    mods = dict(model.named_modules())
    for name in track(sorted(hessians), description="GPTQ onto the NF4 grid", transient=True):
        param = mods[name].weight
        state = param.quant_state
        if state.blocksize != NF4_BLOCK or tuple(state.shape) != tuple(weights[name].shape):
            raise BackendError(f"{name}: unexpected bitsandbytes state (block {state.blocksize}, shape {state.shape})")
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
        scales = absmax.float().view(weights[name].shape[0], -1)
        codes = gptq_math.gptq_onto_grid(weights[name], hessians[name], scales, state.code.float(), NF4_BLOCK,
                                         damp=GPTQ_DAMPENING)
        param.data = gptq_math.pack_nibbles(codes).view(param.data.shape)


def _bitsandbytes(src: Path, dst: Path, cfg: QuantConfig) -> list[str]:
    """bitsandbytes int8 / nf4 through transformers; returns the modules kept in bf16."""
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    gptq = cfg.scheme == "nf4" and cfg.nf4_rounding == "gptq"
    keep: list[str] = []
    hessians: dict = {}
    if gptq or cfg.keep_bf16_share:
        weights, hessians, fisher = _calibrate(src, cfg, gptq)
        if cfg.keep_bf16_share:
            keep = sensitive_modules(weights, fisher, cfg.keep_bf16_share)
            for n in keep:
                hessians.pop(n, None)
        del fisher
    if cfg.scheme == "int8":
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head", *keep])
    else:
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head", *keep])
    with Console(stderr=True).status(f"bitsandbytes {cfg.scheme}: quantizing {src.name}"):
        try:  # unquantized tensors (embedding, norms, kept modules) in bf16
            model = AutoModelForCausalLM.from_pretrained(src, quantization_config=qc, dtype=torch.bfloat16, device_map="cpu")
        except (ImportError, RuntimeError, ValueError) as e:
            raise BackendError(f"bitsandbytes {cfg.scheme} failed on {src}: {str(e).splitlines()[0]}") from None
    if gptq:  # no forward pass on ``model`` before this: on CPU one repacks the 4-bit weights
        _gptq_nf4(model, weights, hessians)
    model.save_pretrained(dst, safe_serialization=True)
    return keep


def _int8_engine(src: Path, dst: Path, hf_cfg: dict[str, Any]) -> None:
    from rich.progress import track
    from safetensors.torch import save_file

    from lorafleet.loading import load_state_dict

    state = load_state_dict(src)
    out = {}
    for name in track(list(state), description="int8 per-channel", transient=True):
        t = state[name]
        if quant_math.LINEAR_RE.match(name) and name.endswith(".weight"):
            out[name], out[name + "_scale"] = quant_math.quantize_int8_per_channel(t)
        else:
            out[name] = t.contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(hf_cfg)
    cfg["quantization_config"] = {"quant_method": ENGINE_QUANT_METHOD, "bits": 8, "symmetric": True,
                                  "granularity": "per-output-channel", "scale_suffix": "_scale",
                                  "modules": "decoder q/k/v/o/gate/up/down projections"}
    write_json(dst / "config.json", cfg)


def _llm_compressor(src: Path, dst: Path, cfg: QuantConfig, hf_cfg: dict[str, Any]) -> tuple[int | None, list[str]]:
    """Run ``optimize/llmc_quantize.py`` in the llm-compressor venv; returns the group size used (w4a16) and the
    modules kept in bf16."""
    from rich.progress import Progress

    python = Path(cfg.llmc_python) if Path(cfg.llmc_python).is_absolute() else ROOT / cfg.llmc_python
    if not python.exists():
        raise ConfigError(f"llm-compressor python {python} not found (build it with `make llmcompressor-venv`)")
    group = None
    if cfg.scheme == "w4a16":
        widths = quant_math.linear_input_widths(hf_cfg)
        group = cfg.group_size or quant_math.pick_group_size(widths)
        if any(w % group for w in widths):
            raise ConfigError(f"group_size {group} does not divide the linear input widths {sorted(set(widths))}")
    keep: list[str] = []
    if cfg.keep_bf16_share:  # w4a16: whole fused groups, since vLLM runs q/k/v and gate/up as one matmul each
        weights, _, fisher = _calibrate(src, cfg, hessians=False)
        keep = sensitive_modules(weights, fisher, cfg.keep_bf16_share,
                                 partial(quant_math.int4_group_round_trip, group=group), quant_math.fused_groups(list(weights)))
        del weights, fisher
    request = {"model": str(src), "out": str(dst), "scheme": cfg.scheme, "group_size": group or 128, "ignore": keep,
               # w4a16: scales and unquantized tensors in bf16, the dtype vLLM computes in (fp32 scales cost
               # another 0.25 bit per weight at group 64, fp32 kept modules twice their bf16 bytes)
               "dtype": "bfloat16" if cfg.scheme == "w4a16" else "float32",
               "smoothing_strength": cfg.smoothing_strength, "max_seq_len": cfg.calib.max_seq_len,
               "texts": calibration_texts(cfg.calib.calib_data, cfg.calib.num_calib_samples)}
    req_path = dst.parent / f".{dst.name}.llmc.json"
    req_path.write_text(json.dumps(request))
    log_path = dst / "llmcompressor.log"
    try:
        with Progress(transient=True) as bar, open(log_path, "w") as log:
            task = bar.add_task(f"llm-compressor {cfg.scheme}", total=3)
            proc = subprocess.Popen([str(python), str(ROOT / "optimize" / "llmc_quantize.py"), str(req_path)],
                                    stdout=subprocess.PIPE, stderr=log, text=True)
            for line in proc.stdout:
                if line.startswith("progress "):
                    _, done, total, what = line.rstrip("\n").split(" ", 3)
                    bar.update(task, completed=int(done), total=int(total), description=f"llm-compressor: {what}")
            proc.wait()
    finally:
        req_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        raise BackendError(f"llm-compressor {cfg.scheme} failed (exit {proc.returncode}): {lines[-1] if lines else ''}")
    if not list(dst.glob("*.safetensors")):
        raise ArtifactError(f"llm-compressor wrote no weights into {dst}")
    return group, keep
