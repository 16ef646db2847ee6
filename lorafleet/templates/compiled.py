"""Compiled templates on disk: the artifact ``lorafleet optimize templates compile`` writes and the gateway
serves. One directory per template::

    <dir>/manifest.json   what was compiled, for which model and block size, and the static prefix's tokens
    <dir>/template.yaml   the template as compiled (reordered / padded), readable by parse_template

Written atomically (temporary directory, then rename), so a reader never sees half an artifact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.atomic import atomic_dir
from lorafleet.errors import ArtifactError, ConfigError
from lorafleet.templates.prefix import num_cacheable_tokens, num_wasted_tokens
from lorafleet.templates.spec import PromptTemplate, Section, Variable, parse_template

ARTIFACT_KIND = "lorafleet.prompt_template"
FORMAT_VERSION = 1


def token_ids_sha256(token_ids: Sequence[int]) -> str:
    """Hex SHA-256 of token ids (little-endian int32s): the static prefix's identity."""
    return hashlib.sha256(b"".join(int(t).to_bytes(4, "little", signed=True) for t in token_ids)).hexdigest()


@dataclass(frozen=True, slots=True)
class StaticPrefix:
    """The tokens every request of a compiled template starts with."""

    token_ids: tuple[int, ...]  #: stable tokens: the same alone and inside every checked full prompt
    block_size: int  #: KV block size (tokens) it was compiled for
    num_pad_tokens: int = 0  #: tokens added by --pad-to-block
    num_unstable_tokens: int = 0  #: static tokens that tokenize differently inside full prompts (left out)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def sha256(self) -> str:
        return token_ids_sha256(self.token_ids)

    @property
    def num_cacheable_tokens(self) -> int:
        return num_cacheable_tokens(self.num_tokens, self.block_size)

    @property
    def num_wasted_tokens(self) -> int:
        return num_wasted_tokens(self.num_tokens, self.block_size)


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    template: PromptTemplate
    prefix: StaticPrefix
    model: str  #: the model (tokenizer and chat template) it was compiled for
    chat_template_sha256: str  #: short hash of that chat template (lorafleet.chat.template_hash)
    changes: tuple[str, ...] = ()  #: what compile changed (moves, role changes, padding)
    checks: dict[str, Any] = field(default_factory=dict)  #: results of compile's checks
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def version(self) -> str:
        return self.template.version


def template_to_dict(template: PromptTemplate) -> dict[str, Any]:
    """The YAML-ready form (what :func:`parse_template` reads back to an equal template, lines aside)."""
    def var(v: Variable) -> dict[str, Any]:
        out: dict[str, Any] = {"type": v.type}
        if not v.required and v.default is None:
            out["required"] = False
        for key in ("default", "description", "max_length", "minimum", "maximum"):
            if getattr(v, key) not in (None, ""):
                out[key] = getattr(v, key)
        for key in ("values", "examples"):
            if getattr(v, key):
                out[key] = list(getattr(v, key))
        return out

    def sec(s: Section) -> dict[str, Any]:
        out: dict[str, Any] = {"name": s.name, "kind": s.kind, "scope": s.scope, "role": s.role}
        if s.pinned:
            out["pinned"] = True
        if s.lint_ignore:
            out["lint_ignore"] = list(s.lint_ignore)
        out["text"] = s.text
        return out

    data: dict[str, Any] = {"name": template.name, "version": template.version}
    if template.description:
        data["description"] = template.description
    if template.constants:
        data["constants"] = dict(template.constants)
    if template.variables:
        data["variables"] = {v.name: var(v) for v in template.variables}
    data["sections"] = [sec(s) for s in template.sections]
    return data


def dump_template_yaml(template: PromptTemplate) -> str:
    """YAML text of ``template``; multi-line text as literal blocks so it stays readable."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.split("\n")) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(template_to_dict(template), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120)


def write_compiled(compiled: CompiledTemplate, out_dir: Path) -> Path:
    """Write ``compiled`` to ``out_dir`` (replacing it) atomically; returns ``out_dir``."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        prefix = compiled.prefix
        manifest = {
            "kind": ARTIFACT_KIND, "format_version": FORMAT_VERSION, "name": compiled.name, "version": compiled.version,
            "model": compiled.model, "chat_template_sha256": compiled.chat_template_sha256,
            "source": str(compiled.template.source) if compiled.template.source else None,
            "static_prefix": {"num_tokens": prefix.num_tokens, "block_size": prefix.block_size,
                              "num_cacheable_tokens": prefix.num_cacheable_tokens,
                              "num_wasted_tokens": prefix.num_wasted_tokens, "num_pad_tokens": prefix.num_pad_tokens,
                              "num_unstable_tokens": prefix.num_unstable_tokens, "sha256": prefix.sha256,
                              "token_ids": list(prefix.token_ids)},
            "changes": list(compiled.changes), "checks": compiled.checks,
        }
        (tmp / "template.yaml").write_text(dump_template_yaml(compiled.template))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def load_compiled(path: Path | str) -> CompiledTemplate:
    """Read a compiled template directory; ArtifactError names what is missing or inconsistent."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        text = (path / "template.yaml").read_text()
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not a compiled template ({Path(e.filename).name} missing); "
                            f"run `lorafleet optimize templates compile`") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable compiled template ({e})") from None
    if manifest.get("kind") != ARTIFACT_KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}/manifest.json: not a {ARTIFACT_KIND} v{FORMAT_VERSION} manifest")
    try:
        template = parse_template(text, path / "template.yaml")
    except ConfigError as e:
        raise ArtifactError(str(e)) from None
    sp = manifest["static_prefix"]
    prefix = StaticPrefix(tuple(sp["token_ids"]), sp["block_size"], sp.get("num_pad_tokens", 0),
                          sp.get("num_unstable_tokens", 0))
    if prefix.sha256 != sp["sha256"] or template.name != manifest["name"]:
        raise ArtifactError(f"{path}/manifest.json: does not match its template or token ids (edited by hand?)")
    return CompiledTemplate(template, prefix, manifest["model"], manifest["chat_template_sha256"],
                            tuple(manifest.get("changes", ())), manifest.get("checks", {}), path)


def load_compiled_templates(entries: Any, base_dir: Path, problems: list[str]) -> tuple[CompiledTemplate, ...]:
    """The templates a gateway config lists under ``templates:``; problems are appended to ``problems``.

    Each entry is a compiled template directory, or a directory of them; relative paths start at ``base_dir``.
    """
    if not isinstance(entries, list):
        problems.append("templates: expected a list of compiled template directories")
        return ()
    found: list[CompiledTemplate] = []
    for entry in entries:
        path = (Path(base_dir) / str(entry)).resolve()
        if not path.is_dir():
            hint = "; compile it first: lorafleet optimize templates compile" if path.suffix in (".yaml", ".yml") else ""
            problems.append(f"templates: '{path}' is not a compiled template directory{hint}")
            continue
        dirs = [path] if (path / "manifest.json").exists() else sorted(p.parent for p in path.glob("*/manifest.json"))
        if not dirs:
            problems.append(f"templates: '{path}' holds no compiled templates (no manifest.json)")
        for d in dirs:
            try:
                found.append(load_compiled(d))
            except ArtifactError as e:
                problems.append(f"templates: {e}")
    names = [c.name for c in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"templates: duplicate template names {dupes}")
    return tuple(found)

