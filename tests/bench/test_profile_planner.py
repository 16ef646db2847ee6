"""The memory planner against hand calculations (issue #8, "done when" 4): Llama-3-8B and -70B shapes, the
real SmolLM2 checkpoint's parameter count, and the ``lorafleet profile plan`` command."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.profiles.planner import (activation_bytes, count_params, kv_bytes_per_token, lora_slot_bytes, plan_memory,
                                    weight_bytes)
from bench.profiles.shapes import read_shape, shape_from_config
from lorafleet.cli import app
from lorafleet.config.profile import GiB, PlanConfig, parse_bytes
from lorafleet.errors import ArtifactError, ConfigError

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama",
             "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
LLAMA3_70B = {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
              "num_hidden_layers": 80}


def test_llama3_8b_kv_bytes_per_token():
    shape = shape_from_config(LLAMA3_8B)
    assert shape.head_dim == 128
    assert kv_bytes_per_token(shape, "bfloat16") == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(shape, "fp8") == 65536
    assert kv_bytes_per_token(shape, "bfloat16", tensor_parallel_size=2) == 65536  # 4 KV heads per GPU
    assert kv_bytes_per_token(shape, "bfloat16", tensor_parallel_size=16) == 16384  # past 8 GPUs heads are replicated


def test_llama3_parameter_counts():
    # 8B: embeddings + untied LM head 2 x 128256 x 4096; per layer q,o 4096^2, k,v 4096 x 1024, MLP 3 x 4096 x 14336,
    # two norms; one final norm.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    p8 = count_params(shape_from_config(LLAMA3_8B))
    assert p8.linear == 32 * per_layer == 6_979_321_856
    assert p8.other == 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096
    assert p8.total == 8_030_261_248
    p70 = count_params(shape_from_config(LLAMA3_70B))
    assert p70.total == 2 * 128256 * 8192 + 80 * (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192) + 8192
    assert p70.total == 70_553_706_496


def test_parameter_count_matches_the_real_checkpoint(base_model_path: Path):
    """Sum of tensor sizes in the SmolLM2 safetensors headers (tied embeddings: stored once)."""
    numel = 0
    for file in base_model_path.glob("*.safetensors"):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                numel += n
    assert count_params(read_shape(base_model_path)).total == numel == 134_515_008


def test_weight_bytes_by_dtype():
    params = count_params(shape_from_config(LLAMA3_8B))
    assert weight_bytes(params, "bfloat16", "bfloat16") == 8_030_261_248 * 2
    assert weight_bytes(params, "fp8", "bfloat16") == 6_979_321_856 + 1_050_939_392 * 2
    # int4: half a byte plus one fp16 scale per 128 weights, for the decoder matrices only
    assert weight_bytes(params, "int4", "bfloat16") == int(6_979_321_856 * (0.5 + 2 / 128) + 1_050_939_392 * 2)


def test_lora_slot_bytes():
    # rank 16 x (in + out) summed over q (4096+4096), k and v (4096+1024), o (4096+4096), gate/up/down (4096+14336)
    per_layer = 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432)
    assert lora_slot_bytes(shape_from_config(LLAMA3_8B), 16, "bfloat16") == 32 * per_layer * 2 == 80 * 2**20


def test_activation_bytes():
    shape = shape_from_config(LLAMA3_8B)
    # 8192 tokens x (4 x 4096 + 4096 + 2 x 1024 + 2 x 14336) bf16 values, plus 256 rows of fp32 logits and probs
    assert activation_bytes(shape, 8192, 256, "bfloat16") == 8192 * 51200 * 2 + 256 * 128256 * 8 == 1_101_529_088


def test_llama3_8b_on_an_80gib_gpu_at_0_9():
    plan = plan_memory(shape_from_config(LLAMA3_8B), PlanConfig(model="x", gpu_mem_bytes=parse_bytes("80GiB")))
    budget = 80 * 2**30 * 9 // 10  # 77,309,411,328
    weights = 8_030_261_248 * 2  # bf16
    acts = 1_101_529_088  # 8192 batched tokens (min(8192, max_model_len)) and the 256-sequence logits cap
    kv = budget - weights - acts - GiB
    assert (plan.budget_bytes, plan.weight_bytes, plan.activation_bytes, plan.kv_cache_bytes) == (budget, weights, acts, kv)
    assert kv == 59_073_617_920
    assert plan.kv_blocks == kv // (131072 * 16) == 28_168
    assert plan.kv_tokens == 450_688
    assert plan.full_length_seqs == pytest.approx(450_688 / 8192)
    # avg sequence = half the context: 450688 // 4096 = 110 -> rounded down to a multiple of 8
    assert plan.max_num_seqs == 104
    assert plan.max_num_batched_tokens == 8192
    assert plan.fits and (plan.weight_dtype, plan.kv_dtype) == ("bfloat16", "bfloat16")


def test_fp8_kv_and_lora_slots():
    cfg = PlanConfig(model="x", gpu_mem_bytes=80 * GiB, kv_dtype="fp8", lora_slots=8, lora_rank=16)
    plan = plan_memory(shape_from_config(LLAMA3_8B), cfg)
    kv = 77_309_411_328 - 16_060_522_496 - 8 * 80 * 2**20 - 1_101_529_088 - GiB
    assert (plan.lora_bytes, plan.kv_cache_bytes) == (8 * 80 * 2**20, kv)
    assert plan.kv_tokens == kv // (65536 * 16) * 16 == 891_136


def test_llama3_70b_needs_tensor_parallelism():
    shape = shape_from_config(LLAMA3_70B)
    alone = plan_memory(shape, PlanConfig(model="x", gpu_mem_bytes=80 * GiB))
    assert not alone.fits and "no memory left for the KV cache" in alone.problems[0]
    tp4 = plan_memory(shape, PlanConfig(model="x", gpu_mem_bytes=80 * GiB, tensor_parallel_size=4))
    weights = 70_553_706_496 * 2 // 4
    acts = 8192 * (4 * 8192 + (8192 + 2 * 1024 + 2 * 28672) // 4) * 2 + 256 * 128256 * 8
    kv = 77_309_411_328 - weights - acts - GiB
    assert (tp4.weight_bytes, tp4.activation_bytes, tp4.kv_cache_bytes) == (weights, acts, kv)
    assert tp4.kv_bytes_per_token == 2 * 80 * 2 * 128 * 2 == 81920  # 2 of 8 KV heads per GPU
    assert tp4.kv_tokens == kv // (81920 * 16) * 16 and tp4.fits


def test_given_limits_and_a_context_that_does_not_fit():
    shape = shape_from_config(LLAMA3_8B)
    fixed = plan_memory(shape, PlanConfig(model="x", gpu_mem_bytes=80 * GiB, max_num_seqs=64, max_num_batched_tokens=2048))
    assert (fixed.max_num_seqs, fixed.max_num_batched_tokens) == (64, 2048)
    assert fixed.activation_bytes == 2048 * 51200 * 2 + 64 * 128256 * 8
    tiny = plan_memory(shape, PlanConfig(model="x", gpu_mem_bytes=17 * GiB, gpu_memory_utilization=1.0,
                                         max_num_batched_tokens=512, max_num_seqs=8))
    assert tiny.kv_tokens == 8064  # (17 GiB - 16,060,522,496 - 1 GiB - 60,637,184) // 2 MiB blocks x 16
    assert not tiny.fits and "less than one 8192-token sequence" in tiny.problems[0]
    no_chunk = plan_memory(shape, PlanConfig(model="x", gpu_mem_bytes=80 * GiB, enable_chunked_prefill=False))
    assert no_chunk.max_num_batched_tokens == 8192


def test_quantized_checkpoint_is_read_from_config():
    awq = shape_from_config({**LLAMA3_8B, "torch_dtype": "float16",
                             "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}})
    plan = plan_memory(awq, PlanConfig(model="x", gpu_mem_bytes=24 * GiB))
    assert (plan.weight_dtype, plan.activation_dtype, plan.kv_dtype) == ("int4", "float16", "float16")
    assert plan.weight_bytes == int(6_979_321_856 * (0.5 + 2 / 128) + 1_050_939_392 * 2)


def test_config_and_size_errors(tmp_path: Path):
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("16GB") == 16 * 10**9 and parse_bytes(1024) == 1024
    with pytest.raises(ConfigError, match="not a size"):
        parse_bytes("eighty")
    with pytest.raises(ConfigError, match="gpu_memory_utilization must be in"):
        PlanConfig(model="x", gpu_mem_bytes=GiB, gpu_memory_utilization=1.5)
    with pytest.raises(ArtifactError, match="no config.json"):
        read_shape(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ArtifactError, match="lacks"):
        read_shape(tmp_path)


def test_plan_command_prints_and_writes_json_and_profile(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    res = CliRunner().invoke(app, ["profile", "plan", "--model", str(tmp_path), "--gpu-mem", "80GiB", "--kv-dtype", "fp8",
                                   "--max-model-len", "8192", "--lora-slots", "8", "--lora-rank", "16",
                                   "--json", str(tmp_path / "plan.json"), "--write-profile", str(tmp_path / "p8.yaml")])
    assert res.exit_code == 0, res.output
    assert "891,136" in res.output and "65,536" in res.output
    plan = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert plan["kv_tokens"] == 891_136 and plan["fits"] is True
    profile = yaml.safe_load((tmp_path / "p8.yaml").read_text())
    assert profile["name"] == "p8" and profile["kv_cache_dtype"] == "fp8" and profile["max_loras"] == 8
    bad = CliRunner().invoke(app, ["profile", "plan", "--model", str(tmp_path), "--gpu-mem", "8GiB"])
    assert bad.exit_code == 2 and "does not fit: no memory left for the KV cache" in bad.output
    bad = CliRunner().invoke(app, ["profile", "plan", "--model", str(tmp_path), "--gpu-mem", "lots"])
    assert bad.exit_code == 2 and "--gpu-mem: not a size" in bad.output
