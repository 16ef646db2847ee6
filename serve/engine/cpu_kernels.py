"""Build and load lorafleet's C++ CPU kernels (``csrc/``) once per machine, with a pure-torch fallback.

The extension is compiled with ``-O3 -march=native`` into ``$LORAFLEET_HOME/kernels/<cpu-and-torch-key>``
on first use (about 30-60 s) and loaded from there afterwards. Without a compiler, or with
``LORAFLEET_NO_KERNELS=1``, :func:`load` returns ``None`` and callers use their torch implementation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

from lorafleet.config import lorafleet_home

log = logging.getLogger(__name__)
CSRC = Path(__file__).parent / "csrc"
SOURCES = ("paged_attention.cpp", "fused_ops.cpp", "lora.cpp", "gemv.cpp")
FUNCTIONS = ("paged_decode_attention", "paged_decode_attention_quant", "write_kv_quant", "rms_norm", "add_rms_norm",
             "rope_and_cache", "silu_and_mul", "lora_add_")
#: built only where ``-march=native`` targets AVX-512 (``csrc/gemv.cpp``); elsewhere projections stay on oneDNN
AVX512_FUNCTIONS = ("bf16_small_m_linear",)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _functions() -> list[str]:
    return [*FUNCTIONS, *(AVX512_FUNCTIONS if " avx512f" in _cpu_flags() else ())]


def _build_key(torch_version: str) -> str:
    flags = _cpu_flags()
    src = "".join((CSRC / s).read_text() for s in SOURCES)
    raw = "|".join([platform.machine(), flags, torch_version, src])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def load() -> Any | None:
    """The compiled kernel module, or ``None`` when it cannot be built here (logged once)."""
    if os.environ.get("LORAFLEET_NO_KERNELS") == "1":
        return None
    import torch
    from torch.utils.cpp_extension import load_inline

    build_dir = lorafleet_home() / "kernels" / _build_key(torch.__version__)
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load_inline(
            name="lorafleet_cpu_kernels",
            cpp_sources=["\n".join((CSRC / s).read_text() for s in SOURCES)],
            functions=_functions(),
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as e:  # no compiler, no headers, ...: fall back to torch ops
        log.warning("CPU kernels unavailable, using the torch fallback: %s", str(e).splitlines()[0] if str(e) else e)
        return None
