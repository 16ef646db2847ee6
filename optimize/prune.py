"""``lorafleet optimize prune``: structured pruning of a Llama-family checkpoint into a smaller dense one.

* **depth**: every decoder layer is scored by its block influence, 1 − cos(input, output) of its hidden
  states averaged over calibration tokens (ShortGPT); the ``ratio`` lowest-scoring unprotected layers are
  removed and the rest renumbered.
* **width**: FFN channel ``j`` of a layer scores mean|silu(gate_j)·up_j| × ‖down[:, j]‖ over calibration
  tokens, and a KV group (one KV head with its query heads) the sum over its query heads of
  mean‖attn_h‖ × ‖o_proj[:, h]‖; the lowest are removed from every layer alike (one config for all layers).

The output is a plain HF checkpoint (fp32, same dtype as the input) with a corrected ``config.json``; an
optional healing pass (:mod:`optimize.heal`) fine-tunes a LoRA adapter on it and merges it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lorafleet.atomic import atomic_dir, write_json
from lorafleet.config.optimize import PruneConfig
from lorafleet.errors import ArtifactError
from optimize import artifact, prune_math
from optimize.textdata import calibration_ids


def collect_stats(path: Path, cfg: PruneConfig) -> dict[str, list]:
    """Run the fp32 model over the calibration set with hooks; block influence (depth) or channel and
    KV-group importances (width), per layer."""
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from lorafleet.loading import load_tokenizer

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    layers = model.model.layers
    n = len(layers)
    cos_sum, tokens = [0.0] * n, [0]
    ffn = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    heads = [torch.zeros(model.config.num_attention_heads) for _ in layers]
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    hooks = []
    for i, layer in enumerate(layers):
        def on_layer(mod, args, kwargs, output, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos_sum[i] += float(torch.nn.functional.cosine_similarity(x[0], y[0], dim=-1).sum())

        def on_down(mod, args, i=i):
            ffn[i] += args[0][0].abs().sum(0)

        def on_o(mod, args, i=i):
            a = args[0][0].view(args[0].shape[1], -1, head_dim)  # [T, heads, hd]
            heads[i] += a.norm(dim=-1).sum(0)

        hooks += [layer.register_forward_hook(on_layer, with_kwargs=True),
                  layer.mlp.down_proj.register_forward_pre_hook(on_down),
                  layer.self_attn.o_proj.register_forward_pre_hook(on_o)]
    with torch.inference_mode():
        batches = calibration_ids(load_tokenizer(path), cfg.calib)
        for ids in track(batches, description=f"{cfg.kind} importance", transient=True):
            model(ids, use_cache=False)
            tokens[0] += ids.shape[1]
    for h in hooks:
        h.remove()
    t = tokens[0]
    with torch.no_grad():
        ffn_score = [(f / t * layer.mlp.down_proj.weight.norm(dim=0)).tolist() for f, layer in zip(ffn, layers)]
        o_norms = [layer.self_attn.o_proj.weight.view(-1, len(heads[0]), head_dim).norm(dim=(0, 2)) for layer in layers]
        head_score = [(h / t * o).tolist() for h, o in zip(heads, o_norms)]
    return {"influence": [1.0 - c / t for c in cos_sum], "ffn": ffn_score, "heads": head_score}


def _depth(state: dict, hf_cfg: dict, stats: dict, cfg: PruneConfig) -> tuple[dict, dict, dict]:
    n = hf_cfg["num_hidden_layers"]
    drop = prune_math.layers_to_drop(stats["influence"], cfg.ratio, prune_math.protected_layers(n, cfg.protect))
    keep = [i for i in range(n) if i not in drop]
    new_state = {}
    for name, t in state.items():
        if name.startswith("model.layers."):
            idx, rest = name[len("model.layers."):].split(".", 1)
            if int(idx) in keep:
                new_state[f"model.layers.{keep.index(int(idx))}.{rest}"] = t
        else:
            new_state[name] = t
    new_cfg = dict(hf_cfg, num_hidden_layers=len(keep))
    for key, value in hf_cfg.items():  # per-layer lists (e.g. layer_types) follow the kept layers
        if isinstance(value, list) and len(value) == n and key != "architectures":
            new_cfg[key] = [value[i] for i in keep]
    return new_state, new_cfg, {"dropped_layers": drop, "block_influence": [round(x, 5) for x in stats["influence"]]}


def _width(state: dict, hf_cfg: dict, stats: dict, cfg: PruneConfig) -> tuple[dict, dict, dict]:
    inter = hf_cfg["intermediate_size"]
    heads, kv_heads = hf_cfg["num_attention_heads"], hf_cfg.get("num_key_value_heads") or hf_cfg["num_attention_heads"]
    head_dim = hf_cfg.get("head_dim") or hf_cfg["hidden_size"] // heads
    group = heads // kv_heads
    keep_ch = prune_math.kept_width(inter, cfg.ratio) if cfg.ratio else inter
    keep_groups = kv_heads - round(cfg.head_ratio * kv_heads)
    if keep_groups < 1:
        raise ValueError("head_ratio would remove every KV group")
    new_state = dict(state)
    kept_groups_per_layer = []
    for i in range(hf_cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        ch = prune_math.top_indices(stats["ffn"][i], keep_ch)
        for name in ("gate_proj", "up_proj"):
            new_state[p + f"mlp.{name}.weight"] = state[p + f"mlp.{name}.weight"][ch].contiguous()
        new_state[p + "mlp.down_proj.weight"] = state[p + "mlp.down_proj.weight"][:, ch].contiguous()
        scores = [sum(stats["heads"][i][g * group:(g + 1) * group]) for g in range(kv_heads)]
        groups = prune_math.top_indices(scores, keep_groups)
        kept_groups_per_layer.append(groups)
        q_rows, kv_rows = prune_math.head_rows(groups, group, head_dim)
        new_state[p + "self_attn.q_proj.weight"] = state[p + "self_attn.q_proj.weight"][q_rows].contiguous()
        for name in ("k_proj", "v_proj"):
            new_state[p + f"self_attn.{name}.weight"] = state[p + f"self_attn.{name}.weight"][kv_rows].contiguous()
        new_state[p + "self_attn.o_proj.weight"] = state[p + "self_attn.o_proj.weight"][:, q_rows].contiguous()
    new_cfg = dict(hf_cfg, intermediate_size=keep_ch, num_attention_heads=keep_groups * group,
                   num_key_value_heads=keep_groups, head_dim=head_dim)
    facts = {"intermediate_size": [inter, keep_ch], "ffn_removed_share": round(1 - keep_ch / inter, 4),
             "kv_groups": [kv_heads, keep_groups], "kept_kv_groups": kept_groups_per_layer}
    return new_state, new_cfg, facts


def run(cfg: PruneConfig) -> dict[str, Any]:
    """Prune ``cfg.model`` into ``cfg.out`` (then heal it if asked); returns the report."""
    from safetensors.torch import save_file

    from lorafleet.loading import load_state_dict

    src, hf_cfg = artifact.resolve_input(cfg.model, f"prune --kind {cfg.kind}")
    out = artifact.check_output(src, cfg.out, cfg.force)
    if any(f"model.layers.0.{m}.bias" in artifact.safetensors_header(src) for m in ("self_attn.q_proj", "mlp.up_proj")):
        raise ArtifactError(f"{src}: projections with biases are not supported by prune")
    t0 = time.perf_counter()
    stats = collect_stats(src, cfg)
    state = load_state_dict(src)
    prune = _depth if cfg.kind == "depth" else _width
    new_state, new_cfg, facts = prune(state, hf_cfg, stats, cfg)
    params = {"before": sum(t.numel() for t in state.values()), "after": sum(t.numel() for t in new_state.values())}
    with atomic_dir(out) as tmp:
        pruned = tmp / "pruned" if cfg.heal_steps else tmp
        pruned.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in new_state.items()}, str(pruned / "model.safetensors"), metadata={"format": "pt"})
        write_json(pruned / "config.json", new_cfg)
        artifact.copy_side_files(src, pruned)
        results = {"kind": cfg.kind, "params": params, "num_layers": [hf_cfg["num_hidden_layers"], new_cfg["num_hidden_layers"]],
                   **facts}
        if cfg.heal_steps:
            from optimize.heal import heal

            results["healing"] = heal(pruned, tmp, cfg, src)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        report = artifact.write_report(tmp, "prune", src, artifact.jsonable(cfg), results)
    return {**report, "path": str(out)}
