"""The model runner: owns the weights, the KV pool and the LoRA stack, and turns a :class:`SchedulerOutput`
into tensors, runs the forward pass and samples. This is the only engine module that builds tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lorafleet.loading import load_hf_config, load_state_dict
from serve.engine.attention import AttnMetadata, PrefillSpan
from lorafleet.config import EngineConfig
from serve.engine import kv_cache
from serve.engine.linear import FAST_ROWS, VERIFY_ROWS, bound_onednn_caches
from serve.engine.kv_math import DTYPE_BYTES, GIB, kv_bytes_per_token, kv_storage_dtype, num_kv_blocks
from serve.engine.llama import LlamaForCausalLM, LlamaSpec
from serve.engine.block_manager import BlockCopy
from serve.engine.lora import LoraAdapter, LoraStack
from serve.engine.logprobs import PromptLogprobs, TokenLogprob, token_logprobs
from serve.engine.sampling_step import RunnerOutput, StepSampler
from serve.engine.scheduler import ScheduledSeq, SchedulerOutput


#: a chunk of at most this many tokens attends row by row through the paged kernel (each token a query with
#: its own causal context length, its own K/V already written) instead of SDPA: a warm 8-token suffix on a
#: 512-token cached prefix spent 252 us per layer in SDPA on the gathered context, against ~15 us here.
ROWWISE_MAX_TOKENS = 32
#: prompt rows turned into logits at once for prompt logprobs (each row is vocab_size fp32 values)
PROMPT_LOGITS_ROWS = 256


def is_rowwise(item: ScheduledSeq) -> bool:
    """Whether ``item``'s tokens attend as independent rows (decodes, draft verification and short chunks)."""
    return item.num_query_tokens <= ROWWISE_MAX_TOKENS


@dataclass(frozen=True, slots=True)
class EngineLayout:
    """Facts known only after loading the model and sizing the KV pool."""

    num_kv_blocks: int
    block_size: int
    max_model_len: int  #: context cap (prompt + output) in tokens
    vocab_size: int
    device: str
    dtype: str
    kv_bytes_per_token: int
    kv_cache_dtype: str = "auto"  #: dtype K/V are stored in: the model dtype, int8 or fp8


def dequantize_int8_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints of ``lorafleet optimize quantize --scheme int8-engine`` store ``W.weight`` as int8 [out, in]
    with ``W.weight_scale`` fp32 [out]; they are dequantized to ``q × scale`` here (in place, fp32) and then cast
    to the engine dtype like any weight. Other state dicts pass through unchanged."""
    for name in [n for n in state if n.endswith(".weight_scale") and state[n[: -len("_scale")]].dtype == torch.int8]:
        weight = name[: -len("_scale")]
        state[weight] = state[weight].float() * state.pop(name).float().reshape(-1, 1)
    return state


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelRunner:
    def __init__(self, cfg: EngineConfig, checkpoint: Path) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
            bound_onednn_caches(cfg.onednn_cache_capacity)
        hf_cfg = load_hf_config(checkpoint)
        self.spec = LlamaSpec.from_hf_config(hf_cfg, str(checkpoint / "config.json"))
        self.model = self._load_model(checkpoint)
        if self.device.type == "cpu":
            from serve.engine import cpu_kernels

            self.model.use_kernels(cpu_kernels.load())
        kv_dtype = kv_storage_dtype(cfg.kv_cache_dtype, cfg.dtype)
        per_token = kv_bytes_per_token(self.spec.num_layers, self.spec.num_kv_heads, self.spec.head_dim, DTYPE_BYTES[kv_dtype])
        blocks = cfg.num_kv_blocks or num_kv_blocks(int(cfg.kv_cache_gb * GIB), per_token, cfg.block_size)
        max_len = min(cfg.max_model_len or self.spec.max_position_embeddings, blocks * cfg.block_size)
        self.layout = EngineLayout(blocks, cfg.block_size, max_len, self.spec.vocab_size, str(self.device), cfg.dtype, per_token,
                                   kv_dtype)
        self.kv_caches = kv_cache.allocate(checkpoint, cfg.kv_cache_dtype, self.spec.num_layers, blocks * cfg.block_size,
                                           self.spec.num_kv_heads, self.spec.head_dim, self.dtype, self.device)
        self.model.rope_cos, self.model.rope_sin = self._rope_tables(checkpoint, max_len)
        self.lora = LoraStack(self.spec, cfg.max_loras, cfg.max_lora_rank, self.dtype, self.device) if cfg.max_loras else None
        self.sampler = StepSampler(self.device, cfg.seed)

    def _load_model(self, checkpoint: Path) -> LlamaForCausalLM:
        with torch.device("meta"):
            model = LlamaForCausalLM(self.spec)
        model = model.to_empty(device=self.device).to(self.dtype)
        if self.spec.tie_word_embeddings:
            model.lm_head = model.embed
        model.load_hf_state_dict(dequantize_int8_weights(load_state_dict(checkpoint)))
        return model.eval()

    def _rope_tables(self, checkpoint: Path, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [max_len, head_dim] from transformers' own rotary embedding, so every rope type it knows
        (default, linear, dynamic, llama3, yarn, ...) matches HF exactly."""
        from transformers import AutoConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rotary = LlamaRotaryEmbedding(AutoConfig.from_pretrained(checkpoint))
        positions = torch.arange(max_len)[None]
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
        return cos[0].to(self.device, self.dtype).contiguous(), sin[0].to(self.device, self.dtype).contiguous()

    # -- adapters --------------------------------------------------------------------------------------
    def set_adapter_slot(self, slot: int, adapter: LoraAdapter | None) -> None:
        if self.lora is None:
            raise RuntimeError("engine started with max_loras=0")
        self.lora.set_slot(slot, adapter)

    def release(self, seq_id: str) -> None:
        """Forget per-sequence state (its RNG) once it finished."""
        self.sampler.release(seq_id)

    # -- one step --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        if out.block_copies:
            self._copy_blocks(out.block_copies)
        items = sorted(out.scheduled, key=lambda it: not is_rowwise(it))  # row-wise attention first (stable)
        input_ids, positions, meta, sample_rows = self._prepare(items)
        lora_batch = None
        if self.lora is not None:
            row_slots = [it.seq.lora_slot for it in items for _ in range(it.num_query_tokens)]
            lora_batch = self.lora.make_batch(row_slots)
        hidden = self.model(
            torch.tensor(input_ids, device=self.device),
            torch.tensor(positions, device=self.device),
            meta,
            self.kv_caches,
            self.lora,
            lora_batch,
        )
        sampling_items = [it for it in items if it.samples]
        prompt_logprobs = self._prompt_logprobs(hidden, items)
        if not sampling_items:
            return RunnerOutput({}, prompt_logprobs=prompt_logprobs)
        logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=self.device)])
        out = self.sampler.sample(logits, sampling_items)
        return replace(out, prompt_logprobs=prompt_logprobs) if prompt_logprobs else out

    def _prompt_logprobs(self, hidden: torch.Tensor, items: list[ScheduledSeq]) -> dict[str, PromptLogprobs]:
        """Raw logprobs of the prompt tokens this step's chunks predict, for sequences that asked for them.
        ``hidden`` [num_tokens, hidden_size] is laid out as ``items`` (in order). The row of position p
        predicts token p + 1; the row of the prompt's last token predicts the first output (sampled)."""
        out: dict[str, PromptLogprobs] = {}
        token_start = 0
        for it in items:
            seq, k = it.seq, it.seq.params.prompt_logprobs
            num_rows = min(it.start + it.num_new_tokens, seq.num_prompt_tokens - 1) - it.start
            if k is not None and seq.num_output_tokens == 0 and num_rows > 0:  # (not again after a preemption)
                targets = seq.prompt_token_ids[it.start + 1:it.start + 1 + num_rows]
                entries: list[TokenLogprob] = []
                for a in range(0, num_rows, PROMPT_LOGITS_ROWS):
                    b = min(a + PROMPT_LOGITS_ROWS, num_rows)
                    logits = self.model.compute_logits(hidden[token_start + a:token_start + b])
                    entries += token_logprobs(logits, targets[a:b], [k] * (b - a))
                out[seq.seq_id] = PromptLogprobs(it.start + 1, tuple(entries))
            token_start += it.num_query_tokens
        return out

    def _copy_blocks(self, copies: tuple[BlockCopy, ...]) -> None:
        """Copy-on-write: copy whole KV blocks ``src`` → ``dst`` in every layer (quantized storage bytewise)."""
        bs = self.cfg.block_size
        offsets = torch.arange(bs, device=self.device)
        src = (torch.tensor([c.src for c in copies], device=self.device)[:, None] * bs + offsets).flatten()
        dst = (torch.tensor([c.dst for c in copies], device=self.device)[:, None] * bs + offsets).flatten()
        for kv in self.kv_caches:
            for t in (kv.k, kv.v):
                raw = t.view(torch.uint8) if t.element_size() == 1 else t
                raw[dst] = raw[src]

    @torch.inference_mode()
    def chunk_logits(self, item: ScheduledSeq) -> torch.Tensor:
        """fp32 logits ``[num_new_tokens, vocab]`` at every token of one chunk, whose K/V are stored as usual
        (prompt scoring: perplexity, next-token agreement). Base model only; nothing is sampled."""
        input_ids, positions, meta, _ = self._prepare([item])
        hidden = self.model(torch.tensor(input_ids, device=self.device), torch.tensor(positions, device=self.device),
                            meta, self.kv_caches)
        return self.model.compute_logits(hidden)

    def _prepare(self, items: list[ScheduledSeq]) -> tuple[list[int], list[int], AttnMetadata, list[int]]:
        bs = self.cfg.block_size
        # Verification rows go through the row-invariant kernel so they reproduce plain decoding (linear.py).
        self.model.kernel_rows = VERIFY_ROWS if any(it.num_draft_tokens for it in items) else FAST_ROWS
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        sample_rows: list[int] = []
        rows: list[tuple[list[int], int]] = []  # (block table, context length) per row-wise query token
        prefills: list[PrefillSpan] = []
        for it in items:
            seq, start, n, q = it.seq, it.start, it.num_new_tokens, it.num_query_tokens
            token_start = len(input_ids)
            input_ids.extend(seq.token_ids[start:start + n])
            input_ids.extend(seq.draft_token_ids[:it.num_draft_tokens])
            positions.extend(range(start, start + q))
            table = seq.block_table
            slot_mapping.extend(table[p // bs] * bs + p % bs for p in range(start, start + q))
            if it.samples:  # the last token's row, then one per draft (the prediction after it)
                sample_rows.extend(range(token_start + n - 1, token_start + q))
            if is_rowwise(it):
                rows.extend((table, p + 1) for p in range(start, start + q))
            else:
                prefills.append(self._prefill_span(token_start, start, q, table))
        tables = lens = slots = mask = None
        if rows:
            if self.model.kernels is not None:
                tables, lens = self._decode_tables(rows)
            else:
                slots, mask = self._decode_context(rows)
        meta = AttnMetadata(
            slot_mapping=torch.tensor(slot_mapping, device=self.device),
            num_decodes=len(rows),
            decode_block_tables=tables,
            decode_context_lens=lens,
            decode_slots=slots,
            decode_mask=mask,
            prefills=tuple(prefills),
            block_size=bs,
        )
        return input_ids, positions, meta, sample_rows

    def _block_slots(self, tables: torch.Tensor) -> torch.Tensor:
        """Block tables [rows, num_blocks] → token slots [rows, num_blocks * block_size]."""
        bs = self.cfg.block_size
        offsets = torch.arange(bs, device=self.device)
        return (tables[:, :, None] * bs + offsets).flatten(1)

    def _decode_tables(self, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tables [num_rows, width] (zero-padded) and context lengths [num_rows] of row-wise queries."""
        width = -(-max(n for _, n in rows) // self.cfg.block_size)
        tables = [t[:width] for t, _ in rows]
        return (torch.tensor([t + [0] * (width - len(t)) for t in tables], device=self.device),
                torch.tensor([n for _, n in rows], device=self.device))

    def _decode_context(self, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.block_size
        tables, lens = self._decode_tables(rows)
        slots = self._block_slots(tables)
        valid = torch.arange(tables.shape[1] * bs, device=self.device)[None, :] < lens[:, None]
        mask = torch.zeros(valid.shape, dtype=self.dtype, device=self.device).masked_fill(~valid, float("-inf"))
        return slots, mask[:, None, None, :]

    def _prefill_span(self, token_start: int, start: int, n: int, table: list[int]) -> PrefillSpan:
        if start == 0:
            return PrefillSpan(token_start, n, None, None)
        ctx = start + n
        slots = self._block_slots(torch.tensor([table[: -(-ctx // self.cfg.block_size)]], device=self.device))[0, :ctx]
        q_pos = torch.arange(start, ctx, device=self.device)[:, None]
        k_pos = torch.arange(ctx, device=self.device)[None, :]
        mask = torch.zeros((n, ctx), dtype=self.dtype, device=self.device).masked_fill(k_pos > q_pos, float("-inf"))
        return PrefillSpan(token_start, n, slots, mask)
