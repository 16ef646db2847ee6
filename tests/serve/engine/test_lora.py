"""serve/engine/lora.py: PEFT adapter loading (what is refused and why), scaling, and the stacked-slot math."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorafleet.errors import ArtifactError
from lorafleet.loading import load_hf_config
from serve.engine.llama import LlamaSpec
from serve.engine.lora import GROUPS, LoraStack, load_peft_adapter

MAX_RANK = 16
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture(scope="module")
def spec(base_model_path: Path) -> LlamaSpec:
    return LlamaSpec.from_hf_config(load_hf_config(base_model_path))


@pytest.fixture
def adapter_copy(lora_adapters: dict[str, Path], tmp_path: Path):
    """``adapter_copy(config_changes)``: a copy of adapter a0 whose adapter_config.json is updated."""

    def make(**changes) -> Path:
        dst = tmp_path / "adapter"
        shutil.copytree(lora_adapters["a0"], dst)
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(changes)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
        return dst

    return make


def load(path: Path, spec: LlamaSpec, max_rank: int = MAX_RANK):
    return load_peft_adapter("t", path, spec, max_rank)


def refused(path: Path, spec: LlamaSpec, max_rank: int = MAX_RANK) -> str:
    with pytest.raises(ArtifactError) as e:
        load(path, spec, max_rank)
    assert str(e.value).startswith("adapter 't': ")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_loads_a_peft_adapter(lora_adapters: dict[str, Path], spec: LlamaSpec, base_model_path: Path) -> None:
    adapter = load(lora_adapters["a0"], spec)
    assert adapter.rank == 8
    assert adapter.scaling == 16 / 8
    assert adapter.base_model == str(base_model_path)
    assert len(adapter.weights) == spec.num_layers * 7
    tensors = load_file(lora_adapters["a0"] / "adapter_model.safetensors")
    a, b = adapter.weights[(0, "q_proj")]
    assert a.shape == (8, spec.hidden_size) and b.shape == (spec.q_size, 8)
    torch.testing.assert_close(a, tensors[Q_A], rtol=0, atol=0)
    a, b = adapter.weights[(29, "down_proj")]
    assert a.shape == (8, spec.intermediate_size) and b.shape == (spec.hidden_size, 8)
    assert b.abs().sum() > 0, "test adapters have non-zero B"


def test_rslora_scaling(adapter_copy, spec: LlamaSpec) -> None:
    assert load(adapter_copy(use_rslora=True), spec).scaling == pytest.approx(16 / math.sqrt(8))


def test_alpha_defaults_to_rank(adapter_copy, spec: LlamaSpec) -> None:
    path = adapter_copy()
    cfg = json.loads((path / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    assert load(path, spec).scaling == 1.0


def test_pickle_only_adapter_is_refused(lora_adapters: dict[str, Path], spec: LlamaSpec, tmp_path: Path) -> None:
    path = tmp_path / "bin-only"
    path.mkdir()
    shutil.copy(lora_adapters["a0"] / "adapter_config.json", path)
    (path / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    assert "pickle weights (adapter_model.bin) are refused" in refused(path, spec)


def test_missing_pieces(lora_adapters: dict[str, Path], spec: LlamaSpec, tmp_path: Path) -> None:
    assert "is not a directory" in refused(tmp_path / "nope", spec)
    (tmp_path / "empty").mkdir()
    assert "has no adapter_config.json" in refused(tmp_path / "empty", spec)
    (tmp_path / "cfg-only").mkdir()
    shutil.copy(lora_adapters["a0"] / "adapter_config.json", tmp_path / "cfg-only")
    assert "has no adapter_model.safetensors" in refused(tmp_path / "cfg-only", spec)


def test_dora_is_refused(adapter_copy, spec: LlamaSpec) -> None:
    assert "DoRA adapters are not served" in refused(adapter_copy(use_dora=True), spec)


def test_rank_above_max_is_refused(lora_adapters: dict[str, Path], spec: LlamaSpec) -> None:
    assert "rank 8 exceeds max_lora_rank 4" in refused(lora_adapters["a0"], spec, max_rank=4)
    assert load(lora_adapters["a0"], spec, max_rank=8).rank == 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not LORA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head'] is not supported"),
        ({"bias": "all"}, "bias 'all' is not supported"),
        ({"rank_pattern": {"q_proj": 4}}, "per-module rank_pattern/alpha_pattern is not supported"),
        ({"r": 0}, "r must be a positive integer, got 0"),
    ],
)
def test_unsupported_configs(adapter_copy, spec: LlamaSpec, changes: dict, message: str) -> None:
    assert message in refused(adapter_copy(**changes), spec)


def test_all_config_problems_reported_together(adapter_copy, spec: LlamaSpec) -> None:
    message = refused(adapter_copy(use_dora=True, bias="lora_only"), spec)
    assert "DoRA" in message and "bias 'lora_only'" in message


def rewrite_weights(path: Path, edit) -> None:
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def test_wrong_shapes_are_refused(adapter_copy, spec: LlamaSpec) -> None:
    path = adapter_copy()
    rewrite_weights(path, lambda t: t.__setitem__(Q_A, t[Q_A][:, :100].contiguous()))
    message = refused(path, spec)
    assert "layers.0.self_attn.q_proj. has shapes (8, 100)/(576, 8), expected (8, 576)/(576, 8)" in message
    assert "another base model" in message


def test_half_a_pair_is_refused(adapter_copy, spec: LlamaSpec) -> None:
    path = adapter_copy()
    rewrite_weights(path, lambda t: t.pop(Q_A))
    assert "has only one of lora_A/lora_B" in refused(path, spec)


def test_unknown_tensors_are_refused(adapter_copy, spec: LlamaSpec) -> None:
    path = adapter_copy()
    rewrite_weights(path, lambda t: t.__setitem__("base_model.model.lm_head.weight", torch.zeros(2, 2)))
    assert "unsupported tensors, e.g. 'base_model.model.lm_head.weight'" in refused(path, spec)


def test_corrupt_weights_are_refused(adapter_copy, spec: LlamaSpec) -> None:
    path = adapter_copy()
    (path / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "cannot read adapter_model.safetensors" in refused(path, spec)


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stack_adds_b_a_x_times_scaling_per_row(lora_adapters: dict[str, Path], spec: LlamaSpec, path: str,
                                                dtype: torch.dtype) -> None:
    a0 = load(lora_adapters["a0"], spec)
    a1 = load(lora_adapters["a1"], spec)
    stack = LoraStack(spec, num_slots=3, max_rank=MAX_RANK, dtype=dtype, device=torch.device("cpu"))
    if path == "torch":
        stack.kernels = None
    elif stack.kernels is None:
        pytest.fail("the C++ kernels did not build here")
    stack.set_slot(0, a0)
    stack.set_slot(2, a1)
    assert stack.make_batch([-1, -1]) is None, "a base-only batch needs no LoRA work"
    rows = [-1, 0, 2, 1, 0] + [2] * 20 + [-1, 0]  # base, a0, a1, an empty slot, a0, a prefill chunk of a1, ...
    batch = stack.make_batch(rows)
    for layer, group in ((0, "qkv"), (17, "o"), (3, "gate_up"), (29, "down")):
        gen = torch.Generator().manual_seed(layer)
        x = torch.randn(len(rows), stack.A[layer][group].shape[2], generator=gen)
        y = torch.randn(len(rows), sum(stack.out_dims[group]), generator=gen).to(dtype)  # the projection's output
        out = stack.add_(layer, group, y.clone(), x.to(dtype), batch)
        assert out.dtype == dtype and out.shape == y.shape
        got = out.float() - y.float()
        for row, slot in enumerate(rows):
            adapter = {0: a0, 2: a1}.get(slot)
            if adapter is None:
                assert got[row].abs().max() == 0, "base rows and rows of an empty slot are left as they are"
                continue
            rounded = [(w.to(dtype).float() for w in adapter.weights[(layer, m)]) for m in GROUPS[group]]
            xr = x[row].to(dtype).float()
            want = torch.cat([(xr @ a.T) @ b.T for a, b in rounded]) * adapter.scaling
            # bf16: y + delta is rounded (and the torch path rounds the rank-R intermediate and delta too), so
            # allow 1% of the row's largest value of y or delta
            atol = 1e-5 if dtype == torch.float32 else 1e-2 * max(want.abs().max().item(), y[row].float().abs().max().item())
            torch.testing.assert_close(got[row].float(), want, rtol=1e-4 if dtype == torch.float32 else 2e-2, atol=atol)
    stack.set_slot(0, None)
    x = torch.randn(len(rows), spec.hidden_size).to(dtype)
    y = torch.zeros(len(rows), sum(stack.out_dims["qkv"]), dtype=dtype)
    assert stack.add_(0, "qkv", y, x, stack.make_batch(rows))[1].abs().max() == 0, "a cleared slot adds nothing"


def test_unreadable_paths_and_configs_are_artifact_errors(adapter_copy, spec: LlamaSpec, tmp_path: Path) -> None:
    """Found by fuzzing the server (issue #10): a client-sent path too long for the file system, or a config
    that is not JSON, made the load endpoint answer 500."""
    assert "cannot read" in refused(tmp_path / ("x" * 5000), spec)
    broken = adapter_copy()
    (broken / "adapter_config.json").write_bytes(b"\xff{not json")
    assert "not valid JSON" in refused(broken, spec)
    (broken / "adapter_config.json").write_text("[1, 2]")
    assert "must hold a JSON object" in refused(broken, spec)
    (broken / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": "sixteen"}))
    assert "lora_alpha must be a number" in refused(broken, spec)
