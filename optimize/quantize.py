"""``lorafleet optimize quantize``: one checkpoint in, one weight-quantized checkpoint plus ``report.json`` out.

| scheme | how | loads in |
|---|---|---|
| ``int8`` | bitsandbytes LLM.int8() (8-bit rows, fp16 outlier columns) | transformers / PEFT |
| ``nf4`` | bitsandbytes NF4, double quantization, bf16 compute (the QLoRA base) | transformers / PEFT |
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
from pathlib import Path
from typing import Any

from lorafleet.atomic import atomic_dir, write_json
from lorafleet.config.optimize import QuantConfig
from lorafleet.errors import ArtifactError, BackendError, ConfigError
from optimize import artifact, quant_math
from optimize.ppl import ENGINE_QUANT_METHOD
from optimize.textdata import calibration_texts

ROOT = Path(__file__).resolve().parents[1]


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
            settings["group_size"] = _llm_compressor(src, tmp, cfg, hf_cfg)
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


def sensitive_modules(src: Path, cfg: QuantConfig) -> list[str]:
    """Decoder linear modules holding ``cfg.keep_bf16_share`` of the linear parameters whose NF4 round trip
    hurts their calibration outputs most: relative error ‖X(W − Ŵ)ᵀ‖ / ‖XWᵀ‖, X = the module's inputs."""
    import bitsandbytes.functional as bnbf
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM

    from lorafleet.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = load_tokenizer(src)
    linears = {n: m for n, m in model.named_modules() if quant_math.LINEAR_RE.match(n + ".")}
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs[n].append(a[0][0].detach())) for n, m in linears.items()]
    with torch.inference_mode():
        for text in calibration_texts(cfg.calib.calib_data, min(cfg.calib.num_calib_samples, 8)):
            model(tok(text, return_tensors="pt", truncation=True, max_length=cfg.calib.max_seq_len).input_ids)
    for h in hooks:
        h.remove()
    errors = {}
    with torch.inference_mode():
        for name in track(list(linears), description="NF4 sensitivity", transient=True):
            w = linears[name].weight.float()
            packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
            x = torch.cat(inputs.pop(name))
            errors[name] = float((x @ (w - bnbf.dequantize_4bit(packed, state).float()).T).norm() / (x @ w.T).norm())
    budget = cfg.keep_bf16_share * sum(m.weight.numel() for m in linears.values())
    kept, used = [], 0
    for name in sorted(errors, key=errors.get, reverse=True):
        if used + linears[name].weight.numel() > budget:
            break
        kept.append(name)
        used += linears[name].weight.numel()
    return kept


def _bitsandbytes(src: Path, dst: Path, cfg: QuantConfig) -> list[str]:
    """bitsandbytes int8 / nf4 through transformers; returns the modules kept in bf16."""
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    keep = sensitive_modules(src, cfg) if cfg.keep_bf16_share else []
    skip = ["lm_head", *keep]
    if cfg.scheme == "int8":
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip)
    with Console(stderr=True).status(f"bitsandbytes {cfg.scheme}: quantizing {src.name}"):
        try:  # unquantized tensors (embedding, norms, kept modules) in bf16
            model = AutoModelForCausalLM.from_pretrained(src, quantization_config=qc, dtype=torch.bfloat16, device_map="cpu")
        except (ImportError, RuntimeError, ValueError) as e:
            raise BackendError(f"bitsandbytes {cfg.scheme} failed on {src}: {str(e).splitlines()[0]}") from None
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


def _llm_compressor(src: Path, dst: Path, cfg: QuantConfig, hf_cfg: dict[str, Any]) -> int | None:
    """Run ``optimize/llmc_quantize.py`` in the llm-compressor venv; returns the group size used (w4a16)."""
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
    request = {"model": str(src), "out": str(dst), "scheme": cfg.scheme, "group_size": group or 128,
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
    return group
