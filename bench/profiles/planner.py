"""The memory planner: pure arithmetic on a :class:`ModelShape` and a :class:`PlanConfig` (no I/O, no torch).

Budget of one GPU (all per GPU when the model is sharded over ``tensor_parallel_size`` GPUs)::

    budget      = gpu_mem × gpu_memory_utilization
    kv_cache    = budget − weights − lora_slots − activations − runtime_reserve
    kv_tokens   = kv_cache // kv_bytes_per_token, rounded down to whole blocks

* weights: decoder-layer matrices at the weight dtype (int4 adds one 16-bit scale per quantization group);
  embeddings, LM head, norms and biases at the activation dtype.
* KV bytes per token = 2 (K and V) × layers × kv_heads × head_dim × KV-dtype bytes.
* a LoRA slot holds A (r × in) and B (out × r) for q, k, v, o, gate, up and down of every layer.
* activations of one step (a profile-run style peak): ``max_num_batched_tokens`` ×
  (4 × hidden + q + 2 × kv + 2 × intermediate) × activation bytes, plus fp32 logits and probabilities of
  ``max_num_seqs`` rows (the cap when max_num_seqs is recommended, so the reserve is an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.profiles.shapes import ModelShape
from lorafleet.config.profile import PlanConfig

DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
DEFAULT_MAX_NUM_SEQS_CAP = 256  #: max_num_seqs ceiling when it is recommended rather than given
CHUNKED_PREFILL_BUDGET = 8192  #: step token budget recommended with chunked prefill (capped by max_model_len)
INT4_GROUP_SIZE = 128  #: quantization group of int4 weights when the checkpoint does not say


@dataclass(frozen=True, slots=True)
class ParamCount:
    linear: int  #: decoder-layer weight matrices (what weight quantization shrinks)
    other: int  #: embeddings, LM head, norms, biases, MoE routers

    @property
    def total(self) -> int:
        return self.linear + self.other


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """What fits on one GPU. Sizes in bytes, capacities in tokens."""

    num_params: int
    weight_dtype: str
    activation_dtype: str
    kv_dtype: str
    tensor_parallel_size: int
    budget_bytes: int  #: gpu_mem × utilization
    weight_bytes: int
    lora_bytes: int
    activation_bytes: int
    runtime_reserve_bytes: int
    kv_cache_bytes: int  #: what is left for the KV cache (negative: does not fit)
    kv_bytes_per_token: int  #: on this GPU
    kv_tokens: int  #: whole blocks only
    kv_blocks: int
    max_model_len: int
    full_length_seqs: float  #: how many max_model_len sequences the cache holds at once
    max_num_seqs: int  #: recommended (or the given value)
    max_num_batched_tokens: int  #: recommended (or the given value)
    problems: tuple[str, ...]  #: why it does not fit; empty when it does

    @property
    def fits(self) -> bool:
        return not self.problems


def resolve_dtypes(shape: ModelShape, weight_dtype: str, kv_dtype: str) -> tuple[str, str, str]:
    """(weight, activation, kv) dtypes. ``auto`` weights follow the checkpoint's quantization or dtype, with
    fp32 checkpoints served in bf16 (as vLLM's ``--dtype auto`` does); ``auto`` KV follows the activations."""
    act = {"float32": "bfloat16", "float16": "float16"}.get(shape.dtype, "bfloat16")
    if weight_dtype == "auto":
        if shape.quant_method == "fp8":
            weight_dtype = "fp8"
        elif shape.quant_bits in (4, 8):
            weight_dtype = f"int{shape.quant_bits}"
        else:
            weight_dtype = act
    elif weight_dtype in ("float32", "float16", "bfloat16"):
        act = weight_dtype
    return weight_dtype, act, act if kv_dtype == "auto" else kv_dtype


def count_params(shape: ModelShape) -> ParamCount:
    """Parameters of the checkpoint, split into quantizable linear weights and the rest."""
    h, i, e = shape.hidden_size, shape.intermediate_size, shape.num_experts
    attn = h * shape.q_dim + 2 * h * shape.kv_dim + shape.q_dim * h
    mlp = 3 * h * i * e
    linear = shape.num_layers * (attn + mlp)
    per_layer_other = 2 * h + (shape.q_dim + 2 * shape.kv_dim if shape.attention_bias else 0) + (h * e if e > 1 else 0)
    embeddings = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    return ParamCount(linear, embeddings + shape.num_layers * per_layer_other + h)


def weight_bytes(params: ParamCount, weight_dtype: str, activation_dtype: str, group_size: int | None = None) -> int:
    """Bytes of all weights; int4 adds one 16-bit scale per ``group_size`` weights."""
    per_param = DTYPE_BYTES[weight_dtype]
    if weight_dtype == "int4":
        per_param += 2 / (group_size or INT4_GROUP_SIZE)
    return int(params.linear * per_param + params.other * DTYPE_BYTES[activation_dtype])


def kv_bytes_per_token(shape: ModelShape, kv_dtype: str, tensor_parallel_size: int = 1) -> int:
    """2 × layers × kv_heads × head_dim × bytes; KV heads are split over GPUs (replicated past one each)."""
    heads = -(-shape.num_kv_heads // tensor_parallel_size)
    return int(2 * shape.num_layers * heads * shape.head_dim * DTYPE_BYTES[kv_dtype])


def lora_slot_bytes(shape: ModelShape, rank: int, dtype: str) -> int:
    """One adapter slot: rank × (in + out) for q, k, v, o, gate, up, down of every layer."""
    h, i = shape.hidden_size, shape.intermediate_size
    in_out = (h + shape.q_dim) + 2 * (h + shape.kv_dim) + (shape.q_dim + h) + 3 * (h + i)
    return int(shape.num_layers * rank * in_out * DTYPE_BYTES[dtype])


def activation_bytes(shape: ModelShape, num_batched_tokens: int, num_seqs: int, dtype: str,
                     tensor_parallel_size: int = 1) -> int:
    """Peak activations of one step of ``num_batched_tokens`` tokens plus fp32 logits and probabilities of
    ``num_seqs`` sampled rows. Attention and MLP projections are split over GPUs; hidden states are not."""
    h, tp = shape.hidden_size, tensor_parallel_size
    per_token = 4 * h + (shape.q_dim + 2 * shape.kv_dim + 2 * shape.intermediate_size) // tp
    return int(num_batched_tokens * per_token * DTYPE_BYTES[dtype] + num_seqs * shape.vocab_size * 4 * 2)


def _round_down(value: int, multiple: int) -> int:
    return value // multiple * multiple if value >= multiple else value


def recommend_batched_tokens(max_model_len: int, chunked_prefill: bool, block_size: int) -> int:
    """With chunked prefill: min(8192, max_model_len) rounded up to whole blocks; without: max_model_len."""
    if not chunked_prefill:
        return max_model_len
    budget = min(CHUNKED_PREFILL_BUDGET, max_model_len)
    return -(-budget // block_size) * block_size


def plan_memory(shape: ModelShape, cfg: PlanConfig) -> MemoryPlan:
    """The budget, KV capacity and batch limits of ``shape`` on one GPU described by ``cfg``."""
    tp = cfg.tensor_parallel_size
    wdtype, act, kvdtype = resolve_dtypes(shape, cfg.weight_dtype, cfg.kv_dtype)
    params = count_params(shape)
    max_len = cfg.max_model_len or shape.max_position_embeddings
    seqs_cap = cfg.max_num_seqs or DEFAULT_MAX_NUM_SEQS_CAP
    batched = cfg.max_num_batched_tokens or max(recommend_batched_tokens(max_len, cfg.enable_chunked_prefill,
                                                                         cfg.block_size), seqs_cap)
    budget = round(cfg.gpu_mem_bytes * cfg.gpu_memory_utilization)
    weights = weight_bytes(params, wdtype, act, shape.quant_group_size) // tp
    lora = cfg.lora_slots * lora_slot_bytes(shape, cfg.lora_rank, act) // tp
    acts = activation_bytes(shape, batched, seqs_cap, act, tp)
    kv_cache = budget - weights - lora - acts - cfg.runtime_reserve_bytes
    per_token = kv_bytes_per_token(shape, kvdtype, tp)
    blocks = max(kv_cache, 0) // (per_token * cfg.block_size)
    tokens = blocks * cfg.block_size
    avg_len = cfg.avg_seq_len or max(1, max_len // 2)
    seqs = cfg.max_num_seqs or max(1, min(seqs_cap, _round_down(tokens // avg_len, 8)))
    problems = []
    if kv_cache <= 0:
        problems.append(f"no memory left for the KV cache ({kv_cache / 2**30:.2f} GiB): use more GPUs "
                        f"(--tensor-parallel-size), quantized weights, or fewer LoRA slots")
    elif tokens < max_len:
        problems.append(f"the KV cache holds {tokens} tokens, less than one {max_len}-token sequence: "
                        f"lower --max-model-len or free memory")
    if not cfg.enable_chunked_prefill and batched < max_len:
        problems.append(f"without chunked prefill max_num_batched_tokens ({batched}) must be >= max_model_len ({max_len})")
    return MemoryPlan(
        num_params=params.total, weight_dtype=wdtype, activation_dtype=act, kv_dtype=kvdtype, tensor_parallel_size=tp,
        budget_bytes=budget, weight_bytes=weights, lora_bytes=lora, activation_bytes=acts,
        runtime_reserve_bytes=cfg.runtime_reserve_bytes, kv_cache_bytes=kv_cache, kv_bytes_per_token=per_token,
        kv_tokens=tokens, kv_blocks=blocks, max_model_len=max_len, full_length_seqs=tokens / max_len,
        max_num_seqs=seqs, max_num_batched_tokens=max(batched, seqs), problems=tuple(problems))
