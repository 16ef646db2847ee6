"""GPTQ rounding onto a fixed code grid with given block scales (pure functions, no model, no I/O).

llm-compressor's GPTQ rounds onto an integer grid whose scales it picks itself; bitsandbytes NF4 has a fixed,
non-uniform 16-value grid and per-block absmax scales. ``gptq_onto_grid`` keeps bitsandbytes' scales and
chooses each weight's code the way GPTQ does (Frantar et al., 2022): columns are rounded left to right and each
rounding error is spread over the columns not yet rounded, weighted by the inverse Hessian of the layer's
inputs, so the layer's outputs on the calibration data move less than with round-to-nearest.
"""

from __future__ import annotations

import torch


def nearest_code(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the ascending ``grid`` for each of ``values`` (ties go to the lower one)."""
    mids = (grid[1:] + grid[:-1]) / 2
    return torch.bucketize(values, mids, right=True)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (row-major) → uint8 pairs, first code in the high nibble: bitsandbytes' 4-bit layout."""
    flat = codes.flatten().to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return ((flat[0::2] << 4) | flat[1::2]).unsqueeze(1)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    flat = packed.flatten()
    return torch.stack([flat >> 4, flat & 15], 1).flatten()[:numel].long()


def damped_hessian(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """``H + damp · mean(diag H) · I``; input channels that never fired get a unit diagonal."""
    h = hessian.double().clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    diag += damp * diag.mean()
    return h


def gptq_onto_grid(weight: torch.Tensor, hessian: torch.Tensor, scales: torch.Tensor, grid: torch.Tensor,
                   block: int, damp: float = 0.1, chunk: int = 128) -> torch.Tensor:
    """Codes (indices into ``grid``) for ``weight`` [out, in] whose dequantized value is
    ``grid[code] * scales[row, col // block]``, chosen by GPTQ's error compensation under ``hessian`` = XᵀX
    [in, in] of the layer's calibration inputs. With a diagonal Hessian this is round-to-nearest."""
    rows, cols = weight.shape
    if cols % block or scales.shape != (rows, cols // block):
        raise ValueError(f"scales {tuple(scales.shape)} do not match weight {tuple(weight.shape)} in blocks of {block}")
    w = weight.double().clone()
    s = scales.double().repeat_interleave(block, dim=1)
    g = grid.double()
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped_hessian(hessian, damp))), upper=True)
    codes = torch.empty(rows, cols, dtype=torch.long)
    for c0 in range(0, cols, chunk):
        c1 = min(c0 + chunk, cols)
        w1, err1, u1 = w[:, c0:c1], torch.zeros(rows, c1 - c0, dtype=torch.float64), u[c0:c1, c0:c1]
        for i in range(c1 - c0):
            col, sc = w1[:, i], s[:, c0 + i]
            idx = nearest_code(col / sc, g)
            codes[:, c0 + i] = idx
            e = (col - g[idx] * sc) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, c1:] -= err1 @ u[c0:c1, c1:]
    return codes


def dequantize(codes: torch.Tensor, scales: torch.Tensor, grid: torch.Tensor, block: int) -> torch.Tensor:
    return grid[codes] * scales.repeat_interleave(block, dim=1)
