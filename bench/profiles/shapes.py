"""The shape of a decoder-only checkpoint as the memory planner needs it, read from its ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.config import models_dir
from lorafleet.errors import ArtifactError


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Sizes of a Llama-family (dense or Mixtral-style MoE) transformer."""

    num_layers: int
    hidden_size: int
    intermediate_size: int  #: per expert for MoE
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  #: q/k/v biases (Qwen2)
    num_experts: int = 1  #: MoE experts per layer (1 = dense MLP)
    dtype: str = "bfloat16"  #: the checkpoint's dtype (config "dtype"/"torch_dtype")
    quant_method: str | None = None  #: quantization_config.quant_method, if any
    quant_bits: int | None = None
    quant_group_size: int | None = None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A :class:`ModelShape` from a parsed HF ``config.json`` (multimodal configs: their ``text_config``)."""
    cfg = cfg.get("text_config") or cfg
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
               if cfg.get(k) is None]
    if missing:
        raise ArtifactError(f"config.json lacks {missing}; the planner needs a decoder-only transformer config")
    heads = int(cfg["num_attention_heads"])
    q = cfg.get("quantization_config") or {}
    return ModelShape(
        num_layers=int(cfg["num_hidden_layers"]), hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(_get(cfg, "moe_intermediate_size", "intermediate_size")), num_heads=heads,
        num_kv_heads=int(_get(cfg, "num_key_value_heads", default=heads)),
        head_dim=int(_get(cfg, "head_dim", default=int(cfg["hidden_size"]) // heads)),
        vocab_size=int(cfg["vocab_size"]), max_position_embeddings=int(_get(cfg, "max_position_embeddings", default=4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
        num_experts=int(_get(cfg, "num_local_experts", "num_experts", default=1)),
        dtype=str(_get(cfg, "dtype", "torch_dtype", default="bfloat16")),
        quant_method=q.get("quant_method"), quant_bits=q.get("bits") or (4 if q.get("load_in_4bit") else None),
        quant_group_size=q.get("group_size"))


def read_shape(model: str | Path) -> ModelShape:
    """The shape of ``model``: a checkpoint directory, its ``config.json``, or a provisioned model name."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    elif not path.is_file() and "/" not in str(model) and (models_dir() / str(model)).is_dir():
        path = models_dir() / str(model) / "config.json"
    if not path.is_file():
        raise ArtifactError(f"model '{model}': no config.json there (give a checkpoint directory, its config.json, "
                            f"or a model provisioned in {models_dir()})")
    try:
        return shape_from_config(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not JSON ({e})") from None
