"""optimize/quant_math.py and optimize/prune_math.py: closed-form cases."""

from __future__ import annotations

import pytest
import torch

from optimize.prune_math import head_rows, kept_width, layers_to_drop, protected_layers, top_indices
from optimize.quant_math import (dequantize_int8_per_channel, fused_groups, int4_group_round_trip, linear_bytes,
                                 linear_input_widths, linear_params, pick_group_size, quantize_int8_per_channel,
                                 share_of_bf16, tensor_bytes)

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "intermediate_size": 1536, "num_key_value_heads": 3}


def test_int8_per_channel_closed_form() -> None:
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [127.0, 63.5, -127.0]])
    q, scale = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert scale.tolist() == pytest.approx([1 / 127, 1.0, 1.0])  # max|row| / 127; a zero row gets 1.0
    # -0.5 * 127 = -63.5 and 63.5 both round half to even (-64, 64); 0.25 * 127 = 31.75 -> 32
    assert q.tolist() == [[127, -64, 32], [0, 0, 0], [127, 64, -127]]
    assert dequantize_int8_per_channel(q, scale).tolist()[2] == [127.0, 64.0, -127.0]


def test_int8_error_bound_is_half_a_step_per_row() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 128) * torch.logspace(-3, 1, 64)[:, None]
    q, scale = quantize_int8_per_channel(w)
    err = (dequantize_int8_per_channel(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert q.abs().amax(dim=1).tolist() == [127] * 64  # every row uses its full range


def test_int4_group_round_trip_closed_form() -> None:
    # group [7, -3.5, 1, 0]: scale 1, codes 7, -4 (round half to even), 1, 0; group [0.7, 0.35, 0.1, -0.05]:
    # scale 0.1, codes 7, 4 (3.5 -> 4), 1, -0 ; an all-zero group stays zero
    w = torch.tensor([[7.0, -3.5, 1.0, 0.0, 0.7, 0.35, 0.1, -0.05], [0.0] * 8])
    out = int4_group_round_trip(w, 4)
    assert out[0].tolist() == pytest.approx([7.0, -4.0, 1.0, 0.0, 0.7, 0.4, 0.1, 0.0], abs=1e-6)
    assert out[1].tolist() == [0.0] * 8
    with pytest.raises(ValueError, match="group size 3 does not divide 8 columns"):
        int4_group_round_trip(w, 3)


def test_fused_groups_follow_vllms_fused_layers() -> None:
    names = [f"model.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    groups = fused_groups(names)
    assert len(groups) == 8 and sorted(len(g) for g in groups) == [1, 1, 1, 1, 2, 2, 3, 3]
    assert ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"] in groups
    assert ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"] in groups and ["model.layers.0.mlp.down_proj"] in groups


def test_group_size_divides_every_width() -> None:
    widths = linear_input_widths(SMOLLM2)
    assert widths == [576, 576, 1536]
    assert pick_group_size(widths) == 64  # 128 does not divide 576
    assert pick_group_size([4096, 4096, 14336]) == 128
    with pytest.raises(ValueError, match="no group size"):
        pick_group_size([100])


def test_linear_bytes_count_every_tensor_of_a_linear_module() -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "model.embed_tokens.weight": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [0, 80]},
        "model.layers.0.self_attn.q_proj.weight_packed": {"dtype": "I32", "shape": [4, 1], "data_offsets": [80, 96]},
        "model.layers.0.self_attn.q_proj.weight_scale": {"dtype": "BF16", "shape": [4, 1], "data_offsets": [96, 104]},
        "model.layers.0.mlp.down_proj.weight.absmax": {"dtype": "F32", "shape": [2], "data_offsets": [104, 112]},
        "model.layers.0.input_layernorm.weight": {"dtype": "BF16", "shape": [4], "data_offsets": [112, 120]},
    }
    sizes = tensor_bytes(header)
    assert sizes["model.embed_tokens.weight"] == 80 and "__metadata__" not in sizes
    assert linear_bytes(sizes) == 16 + 8 + 8  # packed weight, scale and bnb absmax; not embedding or norm
    base = {"model.layers.0.self_attn.q_proj.weight": {"shape": [4, 8]}, "model.layers.1.mlp.up_proj.weight": {"shape": [16, 4]},
            "model.norm.weight": {"shape": [4]}}
    assert linear_params(base) == 96
    assert share_of_bf16(48, 96) == 0.25  # 48 bytes for 96 params = a quarter of their 192 bf16 bytes
    with pytest.raises(ValueError):
        share_of_bf16(1, 0)


def test_protected_layers_and_drop_order() -> None:
    assert protected_layers(10, (-2, 4)) == {0, 9, 8, 4}
    with pytest.raises(ValueError, match="outside"):
        protected_layers(10, (10,))
    influence = [0.9, 0.1, 0.05, 0.3, 0.05, 0.2, 0.5, 0.01, 0.4, 0.8]
    # 20% of 10 layers = 2: the lowest unprotected are 7 (0.01), then 2 and 4 tie at 0.05 -> the later (4) first
    assert layers_to_drop(influence, 0.2, protected_layers(10, ())) == [4, 7]
    assert layers_to_drop(influence, 0.2, protected_layers(10, (7,))) == [2, 4]
    assert layers_to_drop(influence, 0.0, set()) == []
    with pytest.raises(ValueError, match="cannot drop"):
        layers_to_drop(influence, 0.8, protected_layers(10, (1, 2, 3)))


def test_widths_and_indices() -> None:
    assert kept_width(1536, 0.2) == 1216  # 1228.8 rounded to a multiple of 32
    assert kept_width(1536, 0.0) == 1536
    assert kept_width(64, 0.99) == 32
    assert top_indices([0.3, 0.9, 0.1, 0.9, 0.5], 3) == [1, 3, 4]
    with pytest.raises(ValueError):
        top_indices([1.0], 2)
    q_rows, kv_rows = head_rows([0, 2], group_size=2, head_dim=2)
    assert q_rows == [0, 1, 2, 3, 8, 9, 10, 11]  # query heads 0, 1 (group 0) and 4, 5 (group 2)
    assert kv_rows == [0, 1, 4, 5]
