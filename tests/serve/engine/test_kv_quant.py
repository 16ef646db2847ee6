"""Quantized KV cache (int8 / fp8 e4m3 with per-KV-head scales) and int8-engine weights in the engine.

Closed-form cases for the quantizers, the C++ kernels against the torch path on random caches, and the real
SmolLM2 engine: capacity, scale loading (lorafleet's kv_scales.json and vLLM's per-layer k_scale/v_scale),
and teacher-forced log-likelihood with int8/fp8 KV close to the model-dtype cache.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from lorafleet.config import EngineConfig
from lorafleet.errors import ArtifactError
from serve.engine import cpu_kernels, kv_cache
from serve.engine.attention import AttnMetadata, decode_attention, prefill_attention, PrefillSpan
from serve.engine.kv_cache import LayerKV, dequantize, quantize, read_amax
from serve.engine.model_runner import dequantize_int8_weights

pytestmark = pytest.mark.timeout(600)


# -- quantizers: closed form -------------------------------------------------------------------------------
def test_int8_rounds_half_to_even_and_saturates() -> None:
    scale = torch.tensor([0.1, 1.0])
    x = torch.tensor([[[0.05, 0.15, -0.25, 12.7, 100.0]], [[0.5, 1.5, -2.5, 126.6, -1e9]]]).transpose(0, 1)  # [1, 2, 5]
    q = quantize(x, scale, torch.int8)
    assert q.dtype == torch.int8
    assert q[0, 0].tolist() == [0, 2, -2, 127, 127]  # 0.5 → 0, 1.5 → 2, -2.5 → -2 (half to even), saturated
    assert q[0, 1].tolist() == [0, 2, -2, 127, -127]
    assert torch.equal(dequantize(q, scale, torch.float32)[0, 1], torch.tensor([0.0, 2.0, -2.0, 127.0, -127.0]))


def test_fp8_saturates_at_448_and_keeps_small_values() -> None:
    scale = torch.tensor([2.0])
    x = torch.tensor([[[1.0, -3.0, 1000.0, -5000.0, 0.0]]])  # /2 → 0.5, -1.5, 500 → 448, -2500 → -448
    back = dequantize(quantize(x, scale, torch.float8_e4m3fn), scale, torch.float32)
    assert back[0, 0].tolist() == [1.0, -3.0, 896.0, -896.0, 0.0]


def test_round_trip_error_is_at_most_half_a_step() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 64) * torch.tensor([1.0, 5.0, 0.2])[:, None]
    scale = x.abs().amax(dim=(0, 2)) / 127
    err = (dequantize(quantize(x, scale, torch.int8), scale, torch.float32) - x).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()


def test_int8_engine_weights_are_dequantized_per_output_channel() -> None:
    state = {"a.weight": torch.tensor([[127, -64], [1, 0]], dtype=torch.int8), "a.weight_scale": torch.tensor([0.5, 2.0]),
             "b.weight": torch.ones(2, 2), "norm.weight_scale": torch.ones(2)}
    state["norm.weight"] = torch.ones(2)
    out = dequantize_int8_weights(state)
    assert out["a.weight"].tolist() == [[63.5, -32.0], [2.0, 0.0]]
    assert "a.weight_scale" not in out and "norm.weight_scale" in out  # only int8 weights are touched


# -- kernels against the torch path ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernels():
    k = cpu_kernels.load()
    if k is None:
        pytest.skip("no C++ toolchain: the torch path is the only one")
    return k


def _random_cache(kind: str, num_slots: int = 64, kv_heads: int = 3, hd: int = 64) -> LayerKV:
    torch.manual_seed(1)
    k = torch.randn(num_slots, kv_heads, hd) * 3
    v = torch.randn(num_slots, kv_heads, hd)
    ks, vs = k.abs().amax(dim=(0, 2)) / 127, v.abs().amax(dim=(0, 2)) / 127
    if kind == "fp8":
        ks, vs = ks * 127 / 448, vs * 127 / 448
    dtype = kv_cache.TORCH_KV_DTYPES[kind]
    cache = LayerKV(torch.zeros(num_slots, kv_heads, hd, dtype=dtype), torch.zeros(num_slots, kv_heads, hd, dtype=dtype), ks, vs)
    kv_cache.write(cache, k, v, torch.arange(num_slots))
    return cache


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_kernel_matches_torch_path(kernels, kind: str, dtype: torch.dtype) -> None:
    cache = _random_cache(kind)
    bs, lens = 16, torch.tensor([1, 17, 64])
    tables = torch.tensor([[3, 0, 0, 0], [1, 2, 0, 0], [0, 1, 2, 3]])
    slots = (tables[:, :, None] * bs + torch.arange(bs)).flatten(1)
    valid = torch.arange(64)[None] < lens[:, None]
    mask = torch.zeros(valid.shape, dtype=dtype).masked_fill(~valid, float("-inf"))[:, None, None, :]
    q = torch.randn(3, 9, 64).to(dtype)
    meta_k = AttnMetadata(torch.zeros(3, dtype=torch.long), 3, tables, lens, None, None, (), bs)
    meta_t = AttnMetadata(torch.zeros(3, dtype=torch.long), 3, None, None, slots, mask, (), bs)
    ours = decode_attention(q, cache, meta_k, 0.125, kernels).float()
    ref = decode_attention(q, cache, meta_t, 0.125, None).float()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_write_kernel_stores_what_torch_stores(kernels, kind: str) -> None:
    torch.manual_seed(2)
    n, hq, hkv, hd = 20, 9, 3, 64
    qkv = torch.randn(n, (hq + 2 * hkv) * hd) * 4
    scales = torch.tensor([0.02, 0.05, 0.1])
    dtype = kv_cache.TORCH_KV_DTYPES[kind]
    caches = [LayerKV(torch.zeros(40, hkv, hd, dtype=dtype), torch.zeros(40, hkv, hd, dtype=dtype), scales, scales * 2)
              for _ in range(2)]
    slots = torch.randperm(40)[:n]
    kernels.write_kv_quant(qkv, caches[0].k, caches[0].v, slots, caches[0].k_scale, caches[0].v_scale, hq * hd)
    k, v = qkv[:, hq * hd:].split(hkv * hd, dim=1)
    kv_cache.write(caches[1], k.reshape(n, hkv, hd), v.reshape(n, hkv, hd), slots)
    for a, b in ((caches[0].k, caches[1].k), (caches[0].v, caches[1].v)):
        diff = (a.view(torch.uint8).int() - b.view(torch.uint8).int()).abs()
        assert (diff != 0).float().mean() < 1e-3  # division vs reciprocal may flip a rare tie by one code


def test_prefill_sees_the_stored_values() -> None:
    cache = _random_cache("int8")
    q, k, v = torch.randn(5, 9, 64), torch.randn(5, 3, 64), torch.randn(5, 3, 64)
    out = prefill_attention(q, k, v, cache, PrefillSpan(0, 5, None, None), 0.125)
    kq, vq = kv_cache.round_trip(cache, k, v)
    ref = prefill_attention(q, kq, vq, LayerKV(cache.k, cache.v), PrefillSpan(0, 5, None, None), 0.125)
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(kq, k)  # the round trip did change the keys


# -- the real engine ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated(base_model_path, hf_model, tmp_path_factory):
    """A copy of the checkpoint (symlinked weights) with kv_scales.json from HF's post-RoPE cache on two passages."""
    from transformers import DynamicCache

    from lorafleet.loading import load_tokenizer

    root = tmp_path_factory.mktemp("kvq") / "ckpt"
    root.mkdir()
    for f in base_model_path.iterdir():
        (root / f.name).symlink_to(f)
    tok = load_tokenizer(base_model_path)
    k_amax = v_amax = 0
    for text in ("The quick brown fox jumps over the lazy dog. " * 8, "def f(x):\n    return x * 2\n" * 6):
        cache = DynamicCache(config=hf_model.config)
        with torch.inference_mode():
            hf_model(tok(text, return_tensors="pt").input_ids, past_key_values=cache, use_cache=True)
        k = torch.stack([layer.keys[0].abs().amax(dim=(1, 2)) for layer in cache.layers])
        v = torch.stack([layer.values[0].abs().amax(dim=(1, 2)) for layer in cache.layers])
        k_amax, v_amax = torch.maximum(torch.as_tensor(k_amax), k), torch.maximum(torch.as_tensor(v_amax), v)
    (root / "kv_scales.json").write_text(json.dumps({"k_amax": k_amax.tolist(), "v_amax": v_amax.tolist()}))
    return root


def test_capacity_is_two_and_four_times(base_model_path, calibrated) -> None:
    from serve.engine.model_runner import ModelRunner

    blocks = {}
    for dtype, kv in (("float32", "auto"), ("bfloat16", "auto"), ("bfloat16", "int8"), ("float32", "fp8")):
        cfg = EngineConfig(model=str(calibrated), dtype=dtype, device="cpu", kv_cache_gb=0.01, max_loras=0,
                           kv_cache_dtype=kv, num_threads=1)
        runner = ModelRunner(cfg, calibrated)
        blocks[(dtype, kv)] = runner.layout.num_kv_blocks
        assert runner.kv_caches[0].k.dtype == {"auto": getattr(torch, dtype), "int8": torch.int8,
                                               "fp8": torch.float8_e4m3fn}[kv]
    assert blocks[("bfloat16", "int8")] >= 2 * blocks[("bfloat16", "auto")]
    assert blocks[("float32", "fp8")] >= 4 * blocks[("float32", "auto")]
    assert blocks[("bfloat16", "int8")] == 58  # 0.01 GiB / (2 × 30 layers × 3 heads × 64 × 1 byte × 16 tokens)


def test_int8_without_scales_is_refused_and_fp8_defaults_to_one(base_model_path) -> None:
    assert read_amax(base_model_path, 30, 3) is None
    with pytest.raises(ArtifactError, match="needs calibrated KV scales .*lorafleet optimize kv"):
        kv_cache.allocate(base_model_path, "int8", 30, 32, 3, 64, torch.float32, torch.device("cpu"))
    layers = kv_cache.allocate(base_model_path, "fp8", 30, 32, 3, 64, torch.float32, torch.device("cpu"))
    assert layers[0].k_scale.tolist() == [1.0, 1.0, 1.0]


def test_vllm_per_layer_scales_are_read(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({f"model.layers.{i}.self_attn.{n}_scale": torch.tensor(0.5 * (i + 1)) for i in range(2) for n in "kv"},
              str(tmp_path / "model.safetensors"))
    k, v = read_amax(tmp_path, 2, 3)
    assert k == [[224.0] * 3, [448.0] * 3] and v == k  # amax = scale × 448, broadcast over heads
    (tmp_path / "kv_scales.json").write_text(json.dumps({"k_amax": [[1, 2, 3]], "v_amax": [[1, 2, 3]]}))
    with pytest.raises(ArtifactError, match=r"k_amax must be \[2\]\[3\]"):
        read_amax(tmp_path, 2, 3)


@pytest.fixture(scope="module")
def passage_ids(tokenizer):
    from tests.conftest import LONG_TEXT

    return tokenizer(LONG_TEXT + " " + LONG_TEXT).input_ids


def _nll(make_engine, model, passage_ids, **kw) -> float:
    from serve.engine.scoring import score_window

    engine = make_engine(model=str(model), max_loras=0, enable_prefix_caching=False, num_kv_blocks=48, **kw)
    s = score_window(engine, passage_ids, chunk_tokens=200)  # later chunks read earlier ones from the cache
    return s.nll_sum / s.num_predicted


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantized_kv_keeps_perplexity(make_engine, calibrated, passage_ids, kind) -> None:
    ref = _nll(make_engine, calibrated, passage_ids, dtype="bfloat16")
    got = _nll(make_engine, calibrated, passage_ids, dtype="bfloat16", kv_cache_dtype=kind)
    assert got != ref  # quantization is really in the path
    assert math.exp(got) / math.exp(ref) - 1 < 0.015


def test_fp32_scoring_equals_hf(make_engine, base_model_path, hf_model, passage_ids) -> None:
    ours = _nll(make_engine, base_model_path, passage_ids)
    with torch.inference_mode():
        ref = float(hf_model(torch.tensor([passage_ids]), labels=torch.tensor([passage_ids])).loss)
    assert ours == pytest.approx(ref, rel=1e-5)
