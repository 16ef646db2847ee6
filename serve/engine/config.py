"""Engine configuration: user input only, validated on construction, never written to afterwards.

Facts known only once the model is loaded (number of KV blocks, EOS ids, context length) live in
:class:`serve.engine.layout.EngineLayout`, which the model runner returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorafleet.config import DEFAULT_BLOCK_SIZE
from lorafleet.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto",)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of one engine instance. Every field has a CLI flag of the same name on ``lorafleet serve``."""

    model: str = field(metadata={"help": "Provisioned model name or path to an HF checkpoint directory."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weight and activation dtype: float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "'cpu', 'cuda' or 'auto' (CUDA when present)."})
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={"help": "Tokens per KV-cache block."})
    kv_cache_gb: float = field(default=1.0, metadata={"help": "KV-cache budget in GiB, preallocated at start."})
    num_kv_blocks: int | None = field(
        default=None, metadata={"help": "Exact number of KV blocks; overrides kv_cache_gb (tests, tuning)."}
    )
    max_num_seqs: int = field(default=64, metadata={"help": "Most sequences in one running batch."})
    max_num_batched_tokens: int = field(
        default=512, metadata={"help": "Token budget of one step; long prompts are prefilled in chunks of at most this."}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "Context length (prompt + output); default: the model's, capped by the KV cache."}
    )
    enable_prefix_caching: bool = field(default=True, metadata={"help": "Share full KV blocks across requests by content hash."})
    max_loras: int = field(default=8, metadata={"help": "Adapters resident at once (LRU-unloaded beyond this)."})
    max_lora_rank: int = field(default=16, metadata={"help": "Largest LoRA rank accepted; adapter slots are this wide."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the decode step (slow start, faster steps)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch intra-op threads on CPU (default: all cores)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampler for requests without their own seed."})

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got '{self.dtype}'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{self.device}'")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            problems.append(f"block_size must be a positive power of two, got {self.block_size}")
        if self.kv_cache_gb <= 0:
            problems.append(f"kv_cache_gb must be positive, got {self.kv_cache_gb}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            problems.append(f"num_kv_blocks must be at least 2, got {self.num_kv_blocks}")
        if self.max_num_seqs < 1:
            problems.append(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.block_size:
            problems.append(
                f"max_num_batched_tokens must be at least block_size ({self.block_size}), got {self.max_num_batched_tokens}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            problems.append(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.max_loras < 0:
            problems.append(f"max_loras must be non-negative, got {self.max_loras}")
        if self.max_lora_rank < 1:
            problems.append(f"max_lora_rank must be positive, got {self.max_lora_rank}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be positive, got {self.num_threads}")
        if problems:
            raise ConfigError("; ".join(problems))
