"""Process-wide settings read from the environment. Stdlib only; no I/O beyond reading env vars."""

from __future__ import annotations

import os
from pathlib import Path

#: Default block size of the paged KV cache, in tokens per block.
DEFAULT_BLOCK_SIZE = 16


def lorafleet_home() -> Path:
    """Root of lorafleet's cache (models, compiled kernels): ``$LORAFLEET_HOME`` or ``~/.cache/lorafleet``."""
    env = os.environ.get("LORAFLEET_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lorafleet"


def models_dir() -> Path:
    """Directory holding provisioned HF checkpoints, one sub-directory per model name."""
    return lorafleet_home() / "models"
