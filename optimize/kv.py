"""``lorafleet optimize kv``: calibrate K/V-cache scales and write them into a copy of the checkpoint.

Calibration runs the fp32 model over the calibration passages and records, per layer and KV head, the
absolute maximum of the keys *after RoPE* (what the cache stores) and of the values. Two artifacts carry them:

* for vLLM: per-layer fp8 scales ``model.layers.{i}.self_attn.{k,v}_scale`` (amax over heads / 448) and a
  compressed-tensors ``quantization_config.kv_cache_scheme`` (8-bit float, per tensor, static, symmetric),
  which is what llm-compressor writes and what ``vllm serve --kv-cache-dtype fp8`` reads;
* for lorafleet's engine: ``kv_scales.json`` with the per-head maxima, from which ``--kv-cache-dtype int8``
  (amax / 127) and ``fp8`` (amax / 448) derive their scales.

The weights are copied unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lorafleet.atomic import atomic_dir, write_json
from lorafleet.config.optimize import KVQuantConfig
from optimize import artifact
from optimize.textdata import calibration_texts

KV_SCALES_FILE = "kv_scales.json"
FP8_E4M3_MAX = 448.0
KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True,
                   "group_size": None, "block_structure": None, "actorder": None, "observer": "minmax",
                   "observer_kwargs": {}}


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V bytes of one token across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def capacity(hf_cfg: dict[str, Any], budget_bytes: int = 1 << 30) -> dict[str, Any]:
    """Tokens that fit in ``budget_bytes`` of KV cache per storage dtype, and the gains of 1-byte storage."""
    layers, heads = hf_cfg["num_hidden_layers"], hf_cfg["num_attention_heads"]
    kv_heads = hf_cfg.get("num_key_value_heads") or heads
    head_dim = hf_cfg.get("head_dim") or hf_cfg["hidden_size"] // heads
    per = {d: kv_bytes_per_token(layers, kv_heads, head_dim, b) for d, b in (("float32", 4), ("bfloat16", 2), ("int8", 1), ("fp8", 1))}
    return {"budget_bytes": budget_bytes, "bytes_per_token": per,
            "tokens": {d: budget_bytes // b for d, b in per.items()},
            "gain_vs_bfloat16": per["bfloat16"] / per["int8"], "gain_vs_float32": per["float32"] / per["int8"]}


def calibrate(path: Path, texts: list[str], max_seq_len: int) -> tuple[list[list[float]], list[list[float]]]:
    """Per-layer, per-KV-head absolute maxima of post-RoPE keys and of values over ``texts``."""
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging as hf_logging

    from lorafleet.loading import load_tokenizer

    hf_logging.disable_progress_bar()
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    k_amax = v_amax = None
    with torch.inference_mode():
        for text in track(texts, description="calibrating K/V scales", transient=True):
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_seq_len).input_ids
            cache = DynamicCache(config=model.config)
            model(ids, past_key_values=cache, use_cache=True)
            k = torch.stack([layer.keys[0].abs().amax(dim=(1, 2)) for layer in cache.layers])  # [layers, kv_heads]
            v = torch.stack([layer.values[0].abs().amax(dim=(1, 2)) for layer in cache.layers])
            k_amax = k if k_amax is None else torch.maximum(k_amax, k)
            v_amax = v if v_amax is None else torch.maximum(v_amax, v)
    return k_amax.tolist(), v_amax.tolist()


def run(cfg: KVQuantConfig) -> dict[str, Any]:
    """Calibrate ``cfg.model`` and write the scaled copy to ``cfg.out``; returns the report."""
    import torch
    from safetensors.torch import save_file

    from lorafleet.loading import load_state_dict

    src, hf_cfg = artifact.resolve_input(cfg.model, "optimize kv")
    out = artifact.check_output(src, cfg.out, cfg.force)
    t0 = time.perf_counter()
    texts = calibration_texts(cfg.calib.calib_data, cfg.calib.num_calib_samples)
    k_amax, v_amax = calibrate(src, texts, cfg.calib.max_seq_len)
    k_amax = [[a * cfg.margin for a in row] for row in k_amax]
    v_amax = [[a * cfg.margin for a in row] for row in v_amax]
    with atomic_dir(out) as tmp:
        state = load_state_dict(src)
        for i, (k_row, v_row) in enumerate(zip(k_amax, v_amax)):
            state[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor(max(k_row) / FP8_E4M3_MAX, dtype=torch.float32)
            state[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor(max(v_row) / FP8_E4M3_MAX, dtype=torch.float32)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        new_cfg = dict(hf_cfg)
        new_cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "dense", "config_groups": {},
                                          "ignore": [], "quantization_status": "compressed",
                                          "kv_cache_scheme": dict(KV_CACHE_SCHEME)}
        write_json(tmp / "config.json", new_cfg)
        write_json(tmp / KV_SCALES_FILE, {
            "format": "lorafleet-kv-scales/1", "what": "absolute maxima of post-RoPE keys and of values",
            "num_layers": len(k_amax), "num_kv_heads": len(k_amax[0]), "k_amax": k_amax, "v_amax": v_amax,
            "num_calib_samples": len(texts), "margin": cfg.margin})
        artifact.copy_side_files(src, tmp)
        results = {"seconds": round(time.perf_counter() - t0, 1), "capacity": capacity(hf_cfg),
                   "k_amax_range": [min(map(min, k_amax)), max(map(max, k_amax))],
                   "v_amax_range": [min(map(min, v_amax)), max(map(max, v_amax))]}
        report = artifact.write_report(tmp, "kv", src, artifact.jsonable(cfg), results)
    return {**report, "path": str(out)}
