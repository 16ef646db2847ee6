"""Settings of ``lorafleet optimize quantize|kv|prune``, ``lorafleet eval ppl|compare`` and
``lorafleet bench optimize``. Stdlib only; every field is a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.errors import ConfigError

QUANT_SCHEMES = ("int8", "nf4", "w4a16", "w8a8", "int8-engine")
NF4_ROUNDINGS = ("gptq", "nearest")
EVAL_BACKENDS = ("auto", "hf", "engine", "vllm")
PRUNE_KINDS = ("depth", "width")
HEAL_LOSSES = ("ce", "distill")
DEFAULT_MODEL = "smollm2-135m-instruct"
LLMC_PYTHON = ".venv-llmcompressor/bin/python"
VLLM_PYTHON = ".venv-vllm/bin/python"


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


def _check_out(model: str, out: Path, problems: list[str]) -> None:
    if Path(model).expanduser().resolve() == Path(out).expanduser().resolve():
        problems.append(f"--out must differ from the input checkpoint ({out}); inputs are never overwritten")


@dataclass(frozen=True, slots=True)
class CalibConfig:
    """Calibration sample set shared by the commands that calibrate."""

    calib_data: Path | None = field(default=None, metadata={
        "help": "Calibration text file (passages separated by blank lines); default: the set shipped in optimize/data."})
    num_calib_samples: int = field(default=32, metadata={"help": "Calibration passages used (first N of the file)."})
    max_seq_len: int = field(default=256, metadata={"help": "Tokens per calibration passage (longer ones are cut)."})

    def problems(self) -> list[str]:
        out = []
        if self.num_calib_samples < 1:
            out.append(f"num_calib_samples must be positive, got {self.num_calib_samples}")
        if self.max_seq_len < 8:
            out.append(f"max_seq_len must be at least 8, got {self.max_seq_len}")
        if self.calib_data is not None and not Path(self.calib_data).is_file():
            out.append(f"calib_data {self.calib_data} is not a file")
        return out


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """``lorafleet optimize quantize``: one weight-quantization scheme, one new checkpoint."""

    model: str = field(metadata={"help": "Input HF checkpoint: provisioned name or directory (never modified)."})
    out: Path = field(metadata={"help": "Output checkpoint directory (must not exist unless --force)."})
    scheme: str = field(default="int8", metadata={
        "help": "int8 / nf4: bitsandbytes (HF, QLoRA bases); w4a16: GPTQ 4-bit weights; w8a8: SmoothQuant + GPTQ "
                "int8 weights and activations (both llm-compressor, compressed-tensors for vLLM); int8-engine: "
                "per-output-channel int8 weights for lorafleet's engine."})
    group_size: int | None = field(default=None, metadata={
        "help": "w4a16 group size; default: the largest of 128, 64, 32 dividing every linear input width."})
    smoothing_strength: float = field(default=0.8, metadata={"help": "w8a8 SmoothQuant migration strength alpha in [0, 1]."})
    keep_bf16_share: float = field(default=0.0, metadata={
        "help": "int8 / nf4 / w4a16: share of the decoder linear parameters kept in bf16, the modules whose 4-bit "
                "rounding costs the calibration loss most per parameter first (Fisher-weighted; w4a16: whole "
                "fused q/k/v and gate/up groups; 0: quantize all)."})
    nf4_rounding: str = field(default="gptq", metadata={
        "help": "nf4: how weights are rounded onto the NF4 grid, bitsandbytes' block scales either way: gptq "
                "(error compensation on the calibration set, the better quality) or nearest (bitsandbytes "
                "alone, fastest)."})
    calib: CalibConfig = field(default_factory=CalibConfig, metadata={
        "help": "Calibration set (w4a16, w8a8; nf4 GPTQ rounding and the --keep-bf16-share ranking)."})
    llmc_python: str = field(default=LLMC_PYTHON, metadata={"help": "Python of the llm-compressor venv (w4a16, w8a8)."})
    force: bool = field(default=False, metadata={"help": "Replace --out if it exists (never the input)."})

    def __post_init__(self) -> None:
        problems = self.calib.problems()
        if self.scheme not in QUANT_SCHEMES:
            problems.append(f"scheme must be one of {', '.join(QUANT_SCHEMES)}, got '{self.scheme}'")
        if self.group_size is not None and (self.group_size < 1 or self.group_size & (self.group_size - 1)):
            problems.append(f"group_size must be a positive power of two, got {self.group_size}")
        if not 0.0 <= self.keep_bf16_share < 0.5:
            problems.append(f"keep_bf16_share must be in [0, 0.5), got {self.keep_bf16_share}")
        elif self.keep_bf16_share and self.scheme not in ("int8", "nf4", "w4a16"):
            problems.append("keep_bf16_share applies to --scheme int8 / nf4 / w4a16 only")
        if self.nf4_rounding not in NF4_ROUNDINGS:
            problems.append(f"nf4_rounding must be one of {', '.join(NF4_ROUNDINGS)}, got '{self.nf4_rounding}'")
        if not 0.0 <= self.smoothing_strength <= 1.0:
            problems.append(f"smoothing_strength must be in [0, 1], got {self.smoothing_strength}")
        _check_out(self.model, self.out, problems)
        _raise(problems)


@dataclass(frozen=True, slots=True)
class KVQuantConfig:
    """``lorafleet optimize kv``: calibrate per-layer, per-KV-head K/V scales and write them into a checkpoint."""

    model: str = field(metadata={"help": "Input HF checkpoint: provisioned name or directory (never modified)."})
    out: Path = field(metadata={"help": "Output checkpoint directory: the input's files plus K/V scales."})
    calib: CalibConfig = field(default_factory=CalibConfig, metadata={"help": "Calibration prompts."})
    margin: float = field(default=1.0, metadata={
        "help": "Multiplier on the calibrated absolute maxima (>1 leaves head-room for unseen outliers)."})
    force: bool = field(default=False, metadata={"help": "Replace --out if it exists (never the input)."})

    def __post_init__(self) -> None:
        problems = self.calib.problems()
        if not 0.5 <= self.margin <= 4.0:
            problems.append(f"margin must be in [0.5, 4], got {self.margin}")
        _check_out(self.model, self.out, problems)
        _raise(problems)


@dataclass(frozen=True, slots=True)
class PruneConfig:
    """``lorafleet optimize prune``: structured pruning into a smaller dense checkpoint, optionally healed."""

    model: str = field(metadata={"help": "Input HF checkpoint: provisioned name or directory (never modified)."})
    out: Path = field(metadata={"help": "Output checkpoint directory (a dense HF checkpoint)."})
    kind: str = field(default="depth", metadata={
        "help": "depth: drop whole decoder layers by block influence; width: drop FFN channels and attention heads "
                "(whole KV groups) by activation importance."})
    ratio: float = field(default=0.2, metadata={
        "help": "Share removed: of the layers (depth) or of the FFN channels (width), rounded to whole units."})
    head_ratio: float = field(default=0.0, metadata={
        "help": "width: share of KV groups (with their query heads) removed from every layer."})
    protect: tuple[int, ...] = field(default=(), metadata={
        "help": "depth: layer indices never removed (negative counts from the end); the first and last layer are "
                "always kept."})
    calib: CalibConfig = field(default_factory=CalibConfig, metadata={"help": "Calibration passages for the rankings."})
    heal_steps: int = field(default=0, metadata={
        "help": "Healing: LoRA fine-tune steps through `lorafleet train sft`, then `lorafleet train merge` (0: no healing)."})
    heal_data: Path | None = field(default=None, metadata={
        "help": "Healing text (passages separated by blank lines); default: the calibration set plus the docstrings "
                "of 30 stdlib modules (~40k tokens)."})
    heal_loss: str = field(default="ce", metadata={
        "help": "ce: cross-entropy on the healing text; distill: KL from the input (unpruned) model's next-token "
                "distribution at every position of it (does not memorize the text on longer heals)."})
    heal_samples: int = field(default=0, metadata={
        "help": "Heal on text the input model writes itself instead: this many passages of up to 256 tokens, "
                "sampled at temperature 1 by our engine from the openings of the calibration passages (0: off)."})
    force: bool = field(default=False, metadata={"help": "Replace --out if it exists (never the input)."})

    def __post_init__(self) -> None:
        problems = self.calib.problems()
        if self.kind not in PRUNE_KINDS:
            problems.append(f"kind must be one of {', '.join(PRUNE_KINDS)}, got '{self.kind}'")
        if not 0.0 <= self.ratio < 0.9:
            problems.append(f"ratio must be in [0, 0.9), got {self.ratio}")
        if not 0.0 <= self.head_ratio < 0.9:
            problems.append(f"head_ratio must be in [0, 0.9), got {self.head_ratio}")
        if self.kind == "depth" and self.head_ratio:
            problems.append("head_ratio applies to --kind width only")
        if self.kind == "width" and self.protect:
            problems.append("protect applies to --kind depth only")
        if self.ratio == 0 and self.head_ratio == 0:
            problems.append("nothing to prune: ratio and head_ratio are both 0")
        if self.heal_steps < 0:
            problems.append(f"heal_steps must be non-negative, got {self.heal_steps}")
        if self.heal_data is not None and not Path(self.heal_data).is_file():
            problems.append(f"heal_data {self.heal_data} is not a file")
        if self.heal_loss not in HEAL_LOSSES:
            problems.append(f"heal_loss must be one of {', '.join(HEAL_LOSSES)}, got '{self.heal_loss}'")
        if self.heal_samples < 0:
            problems.append(f"heal_samples must be non-negative, got {self.heal_samples}")
        if self.heal_samples and self.heal_data is not None:
            problems.append("heal_samples and heal_data are two sources of healing text; give one")
        _check_out(self.model, self.out, problems)
        _raise(problems)


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """``lorafleet eval ppl`` / ``compare``: where and on what text a checkpoint is scored."""

    data: Path | None = field(default=None, metadata={
        "help": "Held-out text file (passages separated by blank lines); default: the set shipped in optimize/data."})
    backend: str = field(default="auto", metadata={
        "help": "hf: transformers in fp32 (bitsandbytes checkpoints too); engine: lorafleet's engine (int8-engine "
                "weights, --kv-cache-dtype); vllm: a vLLM-CPU server's prompt logprobs (compressed-tensors "
                "checkpoints); auto: the one that loads the checkpoint's format."})
    window_tokens: int = field(default=512, metadata={"help": "Tokens per scored window (passages are joined, then cut)."})
    dtype: str = field(default="float32", metadata={"help": "Activation dtype of the engine / vLLM backends."})
    kv_cache_dtype: str = field(default="auto", metadata={"help": "engine: auto, int8 or fp8; vllm: auto or fp8."})
    vllm_python: str = field(default=VLLM_PYTHON, metadata={"help": "Python of the vLLM-CPU venv (backend vllm)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})
    decode_tokens: int = field(default=64, metadata={"help": "compare: tokens of the single-stream decode-speed run (0: skip)."})

    def __post_init__(self) -> None:
        problems = []
        if self.decode_tokens < 0:
            problems.append(f"decode_tokens must be non-negative, got {self.decode_tokens}")
        if self.backend not in EVAL_BACKENDS:
            problems.append(f"backend must be one of {', '.join(EVAL_BACKENDS)}, got '{self.backend}'")
        if self.window_tokens < 16:
            problems.append(f"window_tokens must be at least 16, got {self.window_tokens}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"dtype must be float32, bfloat16 or float16, got '{self.dtype}'")
        if self.kv_cache_dtype not in ("auto", "int8", "fp8"):
            problems.append(f"kv_cache_dtype must be auto, int8 or fp8, got '{self.kv_cache_dtype}'")
        if self.backend in ("hf", "auto") and self.kv_cache_dtype != "auto":
            problems.append("kv_cache_dtype needs --backend engine or vllm")
        if self.backend == "vllm" and self.kv_cache_dtype == "int8":
            problems.append("vLLM-CPU stores KV as fp8, not int8")
        if self.data is not None and not Path(self.data).is_file():
            problems.append(f"data {self.data} is not a file")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads must be positive, got {self.num_threads}")
        _raise(problems)


@dataclass(frozen=True, slots=True)
class OptimizeBenchConfig:
    """``lorafleet bench optimize``: every scheme on one base, measured in one run."""

    json_path: Path = field(metadata={"help": "Where to write the results JSON."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Base checkpoint (fp32 HF)."})
    work_dir: Path | None = field(default=None, metadata={
        "help": "Where the optimized checkpoints go; default: $LORAFLEET_HOME/bench/optimize."})
    heal_steps: int = field(default=30, metadata={"help": "Healing steps of the pruned checkpoints (0: none)."})
    decode_tokens: int = field(default=64, metadata={"help": "Tokens of the single-stream decode-speed runs."})
    skip_vllm: bool = field(default=False, metadata={"help": "Skip every vLLM-CPU check (load_vllm is then null)."})
    reuse: bool = field(default=True, metadata={
        "help": "Reuse checkpoints and eval results of an earlier, interrupted run in work_dir (same arguments)."})
    vllm_python: str = field(default=VLLM_PYTHON, metadata={"help": "Python of the vLLM-CPU venv."})
    llmc_python: str = field(default=LLMC_PYTHON, metadata={"help": "Python of the llm-compressor venv."})

    def __post_init__(self) -> None:
        problems = []
        if self.heal_steps < 0:
            problems.append(f"heal_steps must be non-negative, got {self.heal_steps}")
        if self.decode_tokens < 8:
            problems.append(f"decode_tokens must be at least 8, got {self.decode_tokens}")
        _raise(problems)
