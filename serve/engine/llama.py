"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral without sliding window) reading HF checkpoints.

Weights are fused at load time: q/k/v into one projection and gate/up into another, so a layer runs four
matmuls. Attention reads and writes the paged KV cache (see :mod:`serve.engine.attention`); LoRA deltas for
many adapters are added in the same pass (see :mod:`serve.engine.lora`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorafleet.errors import ArtifactError
from serve.engine.attention import (AttnMetadata, decode_attention, prefill_attention, rope_and_write_quantized,
                                    write_kv)
from serve.engine.kv_cache import LayerKV
from serve.engine.linear import FAST_ROWS, Projection
from serve.engine.lora import LoraBatch, LoraStack

SUPPORTED_MODEL_TYPES = ("llama", "mistral")


@dataclass(frozen=True, slots=True)
class LlamaSpec:
    """Shapes read from an HF ``config.json``."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> "LlamaSpec":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ArtifactError(
                f"{source}: unsupported architecture '{model_type}' (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ArtifactError(f"{source}: attention/MLP biases are not supported")
        if model_type == "mistral" and cfg.get("sliding_window"):
            raise ArtifactError(f"{source}: sliding-window attention is not supported")
        heads = cfg["num_attention_heads"]
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back, exactly as HF Llama does."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [n, heads, hd] with per-token ``cos``/``sin`` [n, 1, hd] (HF's rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaLayer(nn.Module):
    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        h, i = spec.hidden_size, spec.intermediate_size
        self.input_norm = nn.Parameter(torch.empty(h), requires_grad=False)
        self.post_attn_norm = nn.Parameter(torch.empty(h), requires_grad=False)
        self.qkv = nn.Parameter(torch.empty(spec.q_size + 2 * spec.kv_size, h), requires_grad=False)
        self.o = nn.Parameter(torch.empty(h, spec.q_size), requires_grad=False)
        self.gate_up = nn.Parameter(torch.empty(2 * i, h), requires_grad=False)
        self.down = nn.Parameter(torch.empty(h, i), requires_grad=False)


class LlamaForCausalLM(nn.Module):
    """The decoder. ``forward`` returns final hidden states; ``compute_logits`` applies norm + LM head."""

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Parameter(torch.empty(spec.vocab_size, spec.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(LlamaLayer(spec) for _ in range(spec.num_layers))
        self.norm = nn.Parameter(torch.empty(spec.hidden_size), requires_grad=False)
        self.lm_head = (
            self.embed if spec.tie_word_embeddings
            else nn.Parameter(torch.empty(spec.vocab_size, spec.hidden_size), requires_grad=False)
        )
        self.scale = spec.head_dim**-0.5
        self.kernels = None  #: compiled CPU kernels (serve.engine.cpu_kernels), set by the runner when available
        self.rope_cos: torch.Tensor | None = None  #: [max_len, head_dim] in the model dtype, set by the runner
        self.rope_sin: torch.Tensor | None = None
        #: rows up to which projections use the few-row kernel this step (the runner raises it to
        #: linear.VERIFY_ROWS for steps that verify speculated tokens; see serve.engine.linear)
        self.kernel_rows = FAST_ROWS

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy HF ``LlamaForCausalLM`` tensors into the fused parameters (raises on missing names)."""

        def take(name: str) -> torch.Tensor:
            try:
                return state[name]
            except KeyError:
                raise ArtifactError(f"checkpoint is missing tensor '{name}'") from None

        with torch.no_grad():
            self.embed.copy_(take("model.embed_tokens.weight"))
            self.norm.copy_(take("model.norm.weight"))
            if not self.spec.tie_word_embeddings:
                self.lm_head.copy_(take("lm_head.weight"))
            for i, layer in enumerate(self.layers):
                p = f"model.layers.{i}."
                layer.input_norm.copy_(take(p + "input_layernorm.weight"))
                layer.post_attn_norm.copy_(take(p + "post_attention_layernorm.weight"))
                layer.qkv.copy_(torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]))
                layer.o.copy_(take(p + "self_attn.o_proj.weight"))
                layer.gate_up.copy_(torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]))
                layer.down.copy_(take(p + "mlp.down_proj.weight"))
        self.prepare()

    def prepare(self) -> None:
        """Build the per-projection matmul objects (prepacked on CPU) from the loaded parameters."""
        for layer in self.layers:
            layer.proj = {name: Projection(getattr(layer, name)) for name in ("qkv", "o", "gate_up", "down")}
        self.lm_head_proj = Projection(self.lm_head)

    def use_kernels(self, kernels) -> None:
        """Run the fused ops, and bf16 projections of a few rows, through the compiled CPU kernels (None: torch)."""
        self.kernels = kernels
        few_rows = getattr(kernels, "bf16_small_m_linear", None)
        for proj in [p for layer in self.layers for p in layer.proj.values()] + [self.lm_head_proj]:
            proj.use_few_row_kernel(few_rows)

    def forward(
        self,
        input_ids: torch.Tensor,  # [N]
        positions: torch.Tensor,  # [N] int64
        meta: AttnMetadata,
        kv_caches: list[LayerKV],
        lora: LoraStack | None = None,
        lora_batch: LoraBatch | None = None,
    ) -> torch.Tensor:  # [N, hidden], before the final norm
        spec, eps = self.spec, self.spec.rms_norm_eps
        n = input_ids.shape[0]
        h = F.embedding(input_ids, self.embed)
        x = self._norm(h, self.layers[0].input_norm)
        cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        last = len(self.layers) - 1
        for li, layer in enumerate(self.layers):
            kv = kv_caches[li]
            qkv = layer.proj["qkv"](x, self.kernel_rows)
            if lora_batch is not None:
                lora.add_(li, "qkv", qkv, x, lora_batch)
            q, k, v = self._rope_and_cache(qkv, positions, cos, sin, kv, meta.slot_mapping)
            attn = self._attention(q, k, v, kv, meta).reshape(n, spec.q_size)
            o = layer.proj["o"](attn, self.kernel_rows)
            if lora_batch is not None:
                lora.add_(li, "o", o, attn, lora_batch)
            x = self._add_norm(h, o, layer.post_attn_norm)
            gu = layer.proj["gate_up"](x, self.kernel_rows)
            if lora_batch is not None:
                lora.add_(li, "gate_up", gu, x, lora_batch)
            act = self._silu_and_mul(gu)
            d = layer.proj["down"](act, self.kernel_rows)
            if lora_batch is not None:
                lora.add_(li, "down", d, act, lora_batch)
            if li < last:
                x = self._add_norm(h, d, self.layers[li + 1].input_norm)
            else:
                h += d
        return h

    # -- fused ops: the compiled CPU kernels when loaded, torch otherwise (same rounding points) ----------
    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.rms_norm(x, weight, self.spec.rms_norm_eps)
        return rms_norm(x, weight, self.spec.rms_norm_eps)

    def _add_norm(self, h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``h += delta`` in place, then RMSNorm of ``h``."""
        if self.kernels is not None:
            return self.kernels.add_rms_norm(h, delta.contiguous(), weight, self.spec.rms_norm_eps)
        h += delta
        return rms_norm(h, weight, self.spec.rms_norm_eps)

    def _silu_and_mul(self, gu: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.silu_and_mul(gu.contiguous())
        g, u = gu.chunk(2, dim=-1)
        return F.silu(g) * u

    def _rope_and_cache(self, qkv, positions, cos, sin, kv: LayerKV, slots):
        """Rotate q/k, store k/v at ``slots``; returns q [N, heads, hd], k and v [N, kv_heads, hd]."""
        spec, n = self.spec, qkv.shape[0]
        if self.kernels is not None:
            qkv = qkv.contiguous()
            if kv.is_quantized:
                rope_and_write_quantized(self.kernels, qkv, self.rope_cos, self.rope_sin, positions, kv, slots,
                                         spec.num_heads, spec.num_kv_heads)
            else:
                self.kernels.rope_and_cache(qkv, self.rope_cos, self.rope_sin, positions, kv.k, kv.v, slots,
                                            spec.num_heads, spec.num_kv_heads)
            q, k, v = qkv.split([spec.q_size, spec.kv_size, spec.kv_size], dim=-1)
            return (q.view(n, spec.num_heads, spec.head_dim), k.view(n, spec.num_kv_heads, spec.head_dim),
                    v.view(n, spec.num_kv_heads, spec.head_dim))
        q, k, v = qkv.split([spec.q_size, spec.kv_size, spec.kv_size], dim=-1)
        q = apply_rope(q.view(n, spec.num_heads, spec.head_dim), cos, sin)
        k = apply_rope(k.view(n, spec.num_kv_heads, spec.head_dim), cos, sin)
        v = v.view(n, spec.num_kv_heads, spec.head_dim)
        write_kv(kv, k, v, slots)
        return q, k, v

    def _attention(self, q, k, v, kv: LayerKV, meta: AttnMetadata) -> torch.Tensor:
        parts = []
        nd = meta.num_decodes
        if nd:
            parts.append(decode_attention(q[:nd], kv, meta, self.scale, self.kernels))
        for span in meta.prefills:
            s, e = span.token_start, span.token_start + span.num_tokens
            parts.append(prefill_attention(q[s:e], k[s:e], v[s:e], kv, span, self.scale))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [n, hidden] → fp32 logits [n, vocab]."""
        return self.lm_head_proj(rms_norm(hidden, self.norm, self.spec.rms_norm_eps), self.kernel_rows).float()
