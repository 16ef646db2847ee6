"""Atomic artifact writes, shared by every stage: a reader (a server hot-loading an adapter, a test reading a
results file, the next pipeline stage) sees the old artifact or the new one, never half of one, and an
interrupted run leaves the previous artifact in place.

Files and directories are built under a ``.tmp-<name>-*`` sibling (same filesystem, so the final rename is
atomic); :func:`remove_stale_temporaries` clears what a SIGKILL left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to ``path`` that replaces ``path`` (mode 0644) only if the block succeeds.

    ``suffix`` keeps the extension for writers that choose the format by it (``savefig(tmp)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the file from a server running as another user
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON (non-JSON values such as paths as strings) written atomically; returns ``path``."""
    return write_bytes(path, json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A temporary directory next to ``final`` that becomes ``final`` (replacing it) only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide artifacts from a server running as another user
        yield tmp
        if final.exists():
            old = final.with_name(f"{TMP_PREFIX}{final.name}-old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(directory: Path) -> None:
    """Drop ``.tmp-*`` leftovers of a killed writer in ``directory`` (they are never read)."""
    if Path(directory).is_dir():
        for p in Path(directory).glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
