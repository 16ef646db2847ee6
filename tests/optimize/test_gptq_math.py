"""optimize/gptq_math.py: GPTQ rounding onto a fixed grid, checked on closed-form cases and against
bitsandbytes' own NF4 codes and packing; optimize.quantize.sensitive_modules' budget and ranking."""

from __future__ import annotations

import pytest
import torch

from optimize.gptq_math import dequantize, gptq_onto_grid, nearest_code, pack_nibbles, unpack_nibbles

GRID3 = torch.tensor([-1.0, 0.0, 1.0])


def test_nearest_code_closed_form() -> None:
    values = torch.tensor([-2.0, -0.6, -0.5, -0.4, 0.0, 0.49, 0.5, 0.51, 3.0])
    # midpoints -0.5 and 0.5; a tie goes to the upper code (bucketize right=True)
    assert nearest_code(values, GRID3).tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_diagonal_hessian_is_round_to_nearest() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    scales = w.view(6, 2, 4).abs().amax(-1)
    codes = gptq_onto_grid(w, torch.diag(torch.rand(8) + 0.5), scales, GRID3, block=4, damp=0.0)
    assert torch.equal(codes, nearest_code(w / scales.repeat_interleave(4, dim=1), GRID3))


def test_error_moves_to_the_correlated_column_closed_form() -> None:
    # one row, w = [0.4, 0.2], H = [[1, a], [a, 1]]: column 0 rounds to 0; the optimal update of column 1 is
    # w1 - (w0 - q0) * Hinv[0,1] / Hinv[0,0] = 0.2 + a * 0.4, which rounds to 1 for a = 0.9 (0.56) and to 0 for
    # a = 0 (round-to-nearest)
    w, scales = torch.tensor([[0.4, 0.2]]), torch.ones(1, 1)
    for a, expected in ((0.9, [1, 2]), (0.0, [1, 1])):
        h = torch.tensor([[1.0, a], [a, 1.0]])
        assert gptq_onto_grid(w, h, scales, GRID3, block=2, damp=0.0).tolist() == [expected]
    # dampening adds 10% of the mean diagonal: the update becomes a / 1.1 * 0.4 = 0.327 -> still 0.527 -> 1
    assert gptq_onto_grid(w, torch.tensor([[1.0, 0.9], [0.9, 1.0]]), scales, GRID3, 2, damp=0.1).tolist() == [[1, 2]]


def test_gptq_lowers_the_output_error_on_its_calibration_inputs() -> None:
    bnbf = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    grid = bnbf.get_4bit_type("nf4", device="cpu").float()
    w = torch.randn(64, 256) * 0.02
    x = torch.randn(1024, 64) @ torch.randn(64, 256) + 0.1 * torch.randn(1024, 256)  # correlated, as activations are
    scales = w.view(64, -1, 64).abs().amax(-1)
    gptq = dequantize(gptq_onto_grid(w, x.T @ x, scales, grid, 64), scales, grid, 64)
    rtn = dequantize(nearest_code(w / scales.repeat_interleave(64, dim=1), grid), scales, grid, 64)

    def out_err(wq: torch.Tensor) -> float:
        return float((x @ (w - wq).T).norm() / (x @ w.T).norm())

    assert out_err(gptq) < 0.7 * out_err(rtn)


def test_codes_and_packing_match_bitsandbytes_nf4() -> None:
    bnbf = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(1)
    w = torch.randn(12, 128)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    absmax = (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).view(12, 2)
    codes = unpack_nibbles(packed, w.numel()).view(12, 128)
    grid = state.code.float()
    assert torch.equal(pack_nibbles(codes), packed)
    assert torch.equal(dequantize(codes, absmax, grid, 64), bnbf.dequantize_4bit(packed, state))
    # bitsandbytes scales by the exact absmax, the double-quantized one is a rounding of it: codes agree almost
    # everywhere with round-to-nearest under the stored scale, and GPTQ with a diagonal Hessian is exactly that
    rtn = nearest_code(w / absmax.repeat_interleave(64, dim=1), grid)
    assert (rtn == codes).float().mean() > 0.99
    assert torch.equal(gptq_onto_grid(w, torch.eye(128), absmax, grid, 64, damp=0.0), rtn)


def test_mismatched_scales_are_refused() -> None:
    with pytest.raises(ValueError, match=r"scales \(2, 3\) do not match weight \(2, 8\) in blocks of 4"):
        gptq_onto_grid(torch.zeros(2, 8), torch.eye(8), torch.ones(2, 3), GRID3, block=4)


def test_sensitive_modules_rank_by_fisher_weighted_error_within_the_budget() -> None:
    pytest.importorskip("bitsandbytes")
    from optimize.quantize import sensitive_modules

    torch.manual_seed(2)
    weights = {"a": torch.randn(64, 64), "b": torch.randn(64, 64), "c": torch.randn(128, 64), "d": torch.randn(64, 64)}
    fisher = {"a": torch.full((64, 64), 1.0), "b": torch.full((64, 64), 100.0), "c": torch.full((128, 64), 30.0),
              "d": torch.zeros(64, 64)}
    # a, b, d: 4,096 parameters each, c: 8,192 (of 20,480); order by score per parameter: b, c, a, d (zero Fisher:
    # its rounding does not move the loss); greedy, a module that does not fit is skipped, smaller ones go on
    assert sensitive_modules(weights, fisher, 0.0) == []
    assert sensitive_modules(weights, fisher, 0.21) == ["b"]
    assert sensitive_modules(weights, fisher, 0.41) == ["a", "b"]  # c does not fit beside b
    assert sensitive_modules(weights, fisher, 0.61) == ["b", "c"]
    assert sensitive_modules(weights, fisher, 0.81) == ["a", "b", "c"]
    # fused groups are kept or quantized together, ranked by their summed score per parameter: {b, d} scores
    # half of b's, still above c, so a 41% budget takes b with d, and c does not fit beside them
    groups = [["a"], ["b", "d"], ["c"]]
    assert sensitive_modules(weights, fisher, 0.41, groups=groups) == ["b", "d"]
    assert sensitive_modules(weights, fisher, 0.81, groups=groups) == ["b", "c", "d"]
