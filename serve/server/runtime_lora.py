"""Who may load adapters at runtime, and from where (``--allow-runtime-lora ROOT ...``).

Off by default, as in vLLM (which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): a server reachable by others
must not read whatever path a caller names. With roots given, a path must resolve (``..`` and symlinks
followed) inside one of them; relative paths are taken from each root, as the gateway takes them. A path
outside the roots gets one message whether or not it exists, so the endpoint cannot be used to probe the
disk. Inside the roots, the gateway's own checks apply (adapter_config.json, safetensors only, no file
linking out of the roots), and their messages may name what is missing: the operator put it there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorafleet.config import adapter_name_problem
from serve.adapter_files import check_adapter_dir, resolve_under_roots
from serve.server.errors import HTTPError

DISABLED = ("runtime adapter loading is disabled on this server; start it with --allow-runtime-lora ROOT to load "
            "adapters from ROOT")


def require_enabled(roots: Sequence[Path]) -> None:
    """403 unless runtime loading is on."""
    if not roots:
        raise HTTPError(403, DISABLED)


def check_name(name: str) -> None:
    """400 naming ``lora_name`` unless it follows the adapter-name rule (the gateway's too)."""
    if (why := adapter_name_problem(name)) is not None:
        raise HTTPError(400, why, "lora_name")


def allowed_adapter_dir(name: str, path: str, roots: Sequence[Path]) -> Path:
    """The resolved adapter directory for a load request, or HTTPError: 403 when loading is off, 400 for a
    path outside the roots (the same message whether it exists or not) or an unusable directory."""
    require_enabled(roots)
    check_name(name)
    real = resolve_under_roots(Path(path), roots)
    if real is None:
        raise HTTPError(400, "lora_path is not inside the adapter roots this server allows (--allow-runtime-lora)",
                        "lora_path")
    checked, problems = check_adapter_dir(name, real, roots)
    if checked is None:
        raise HTTPError(400, "; ".join(problems), "lora_path")
    return checked
