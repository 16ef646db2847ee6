"""Peak memory of the training phase: resident set size on CPU, allocated memory on CUDA."""

from __future__ import annotations

import ctypes
import gc
import re
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True, slots=True)
class PeakMemory:
    """``num_bytes`` at the high-water mark, and what was measured (``cpu_rss`` or ``cuda_allocated``)."""

    num_bytes: int
    kind: str


def reset_peak(device: torch.device) -> None:
    """Start a new high-water mark from now (so model loading does not count)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    try:  # hand heap memory freed while loading (e.g. float weights before 4-bit quantization) back to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def read_peak(device: torch.device) -> PeakMemory:
    """The high-water mark since :func:`reset_peak` (process lifetime where the kernel cannot reset it)."""
    if device.type == "cuda":
        return PeakMemory(int(torch.cuda.max_memory_allocated(device)), "cuda_allocated")
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        match = None
    kib = int(match.group(1)) if match else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return PeakMemory(kib * 1024, "cpu_rss")
