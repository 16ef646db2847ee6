"""Output checkpoints of ``lorafleet optimize``: resolved inputs, atomic output directories, ``report.json``.

Every command builds its checkpoint in ``<out>.tmp-<pid>`` beside the destination and renames it into place
only when complete, so an interrupted run leaves nothing that looks like a checkpoint. The input is never
written to: an output equal to, inside, or containing the input is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from lorafleet.atomic import write_json
from lorafleet.errors import ArtifactError, ConfigError
from lorafleet.loading import load_hf_config, resolve_model

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
#: non-weight files copied from the input into every output checkpoint
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "chat_template.jinja", "generation_config.json")
REPORT_FILE = "report.json"


def resolve_input(model: str, what: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory and its config; refuses architectures the optimizers do not know."""
    path = resolve_model(model)
    cfg = load_hf_config(path)
    kind = cfg.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ArtifactError(f"{path}: {what} supports {', '.join(SUPPORTED_MODEL_TYPES)} checkpoints, not '{kind}'")
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?")
        raise ArtifactError(f"{path}: already quantized ({method}); {what} needs an unquantized checkpoint")
    return path, cfg


def check_output(src: Path, out: Path, force: bool) -> Path:
    """``out`` made absolute, after refusing to touch ``src`` and an existing ``out`` without ``force``."""
    src, out = src.resolve(), Path(out).expanduser().resolve()
    if out == src or src in out.parents or out in src.parents:
        raise ConfigError(f"--out {out} overlaps the input checkpoint {src}; inputs are never overwritten")
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists (pass --force to replace it)")
    return out


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template and generation config of ``src`` into ``dst``."""
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def write_report(dst: Path, command: str, src: Path, settings: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """``report.json``: what was run on which input, and what it cost (sizes, timings, quality)."""
    report = {"command": command, "source": str(src), "created_unix": int(time.time()), "settings": settings,
              "bytes": dir_bytes(dst), **results}
    write_json(dst / REPORT_FILE, report)
    return report


def dir_bytes(path: Path) -> int:
    """Bytes of the weight files (``*.safetensors``) of a checkpoint directory."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def read_report(path: Path) -> dict[str, Any] | None:
    """A checkpoint's ``report.json``, or ``None`` if it has none."""
    file = path / REPORT_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def jsonable(settings: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready values (paths as strings, nested dataclasses as dicts)."""
    from dataclasses import asdict, is_dataclass

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(asdict(settings) if is_dataclass(settings) else dict(settings))


def safetensors_header(path: Path) -> dict[str, Any]:
    """The merged tensor headers (name → dtype, shape, data_offsets) of a checkpoint's safetensors files."""
    import struct

    header: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header.update({k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"})
    return header
