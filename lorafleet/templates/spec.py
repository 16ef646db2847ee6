"""The prompt-template format: a YAML file of ordered sections (Jinja text, each static or per-request),
typed per-request variables and fixed constants. :func:`parse_template` validates a whole file at once and
raises one :class:`ConfigError` listing every problem, each with its line.

Example::

    name: support
    version: 1
    constants:
      tools: [{name: lookup_order, parameters: {order_id: string}}]
    variables:
      question: {type: string, max_length: 4000}
      customer: {type: json, required: false, default: {}}
    sections:
      - {name: tools, kind: tools, text: "Tools: {{ tools | canonical_json }}"}
      - {name: policy, kind: system, text: "You are Acme's support assistant. ..."}
      - {name: customer, kind: context, text: "Customer: {{ customer | canonical_json }}"}
      - {name: question, kind: user, text: "{{ question }}"}

A section's ``kind`` documents what it holds and gives its default ``scope`` and chat ``role``
(:data:`KIND_DEFAULTS`). Consecutive sections with the same role become one chat message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from lorafleet.errors import ConfigError

STATIC, PER_REQUEST = "static", "per_request"
SCOPES = (STATIC, PER_REQUEST)
ROLES = ("system", "user", "assistant")
#: section kind -> (default scope, default role)
KIND_DEFAULTS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "tools": (STATIC, "system"),  # tool / function schemas
    "system": (STATIC, "system"),  # the system policy
    "examples": (STATIC, "system"),  # few-shot examples
    "document": (STATIC, "system"),  # static reference documents
    "context": (PER_REQUEST, "user"),  # session context: the customer, the date, retrieved passages
    "user": (PER_REQUEST, "user"),  # the user's turn
})
VARIABLE_TYPES = ("string", "integer", "number", "boolean", "enum", "json")
#: marks where static content ends inside a rendered prompt; refused in template text (see render.py)
SENTINEL = "\ue000"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = ("name", "version", "description", "constants", "variables", "sections")
_SECTION_KEYS = ("name", "kind", "scope", "role", "text", "pinned", "lint_ignore")
_VARIABLE_KEYS = ("type", "required", "default", "description", "max_length", "values", "minimum", "maximum", "examples")


@dataclass(frozen=True, slots=True)
class Variable:
    """A typed per-request input. ``max_length`` counts characters (of the canonical JSON for ``json``)."""

    name: str
    type: str  #: one of VARIABLE_TYPES
    required: bool = True  #: False when a default is given or the variable is declared optional
    default: Any = None  #: value used when the request leaves the variable out
    description: str = ""
    max_length: int | None = None
    values: tuple[Any, ...] = ()  #: allowed values of an ``enum``
    minimum: float | None = None  #: bounds of ``integer`` / ``number``
    maximum: float | None = None
    examples: tuple[Any, ...] = ()  #: sample values, used by compile's tokenization checks
    line: int = 0  #: 1-based line in the source file (0: unknown)


@dataclass(frozen=True, slots=True)
class Section:
    """One ordered part of the prompt; ``text`` is Jinja over the constants and variables."""

    name: str
    kind: str  #: one of KIND_DEFAULTS
    scope: str  #: ``static`` (the same for every request) or ``per_request``
    role: str  #: chat role of the message this section goes into
    text: str
    pinned: bool = False  #: compile --reorder never moves a pinned section
    lint_ignore: tuple[str, ...] = ()  #: lint codes not reported for this section
    line: int = 0  #: line of the section's entry in the source file
    text_line: int = 0  #: line of the first line of ``text``

    @property
    def is_static(self) -> bool:
        return self.scope == STATIC


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    name: str
    version: str
    sections: tuple[Section, ...]
    variables: tuple[Variable, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None  #: file it was read from
    constant_lines: Mapping[str, int] = field(default_factory=dict)  #: constant name -> line

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)


# -- reading ------------------------------------------------------------------------------------------------
def load_template(path: Path | str) -> PromptTemplate:
    """Read and validate the template YAML at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read template {path}: {e.strerror}") from None
    return parse_template(text, path)


def parse_template(text: str, source: Path | None = None) -> PromptTemplate:
    """A validated template from YAML ``text``; ConfigError lists every problem with its line."""
    import yaml

    where = str(source) if source else "<template>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a template is a YAML mapping with name and sections")
    lines = _Lines(root)
    problems: list[str] = []
    _unknown(data, _TOP_KEYS, "", lines, (), problems)
    name = str(data.get("name", ""))
    if not _NAME.match(name):
        problems.append(f"line {lines.of('name')}: name must match {_NAME.pattern}, got {name!r}")
    constants = data.get("constants") or {}
    if not isinstance(constants, dict):
        problems.append(f"line {lines.of('constants')}: constants must be a mapping")
        constants = {}
    variables = _variables(data.get("variables") or {}, lines, problems)
    sections = _sections(data.get("sections"), lines, problems)
    for c in constants:
        if not isinstance(c, str) or not _IDENT.match(c):
            problems.append(f"line {lines.of('constants', c)}: constant name {c!r} is not an identifier")
        elif any(v.name == c for v in variables):
            problems.append(f"line {lines.of('constants', c)}: '{c}' is both a constant and a variable")
    if sections:
        from lorafleet.templates.render import undeclared_names

        for s in sections:
            problems.extend(undeclared_names(s, set(constants) | {v.name for v in variables}))
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return PromptTemplate(name, str(data.get("version", "1")), tuple(sections), tuple(variables), dict(constants),
                          str(data.get("description", "") or ""), source,
                          {c: lines.of("constants", c) for c in constants})


class _Lines:
    """1-based lines of the nodes of a composed YAML document, looked up by key path."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def node(self, *path: str | int) -> Any:
        node = self.root
        for key in path:
            if node is None:
                return None
            if isinstance(key, int):
                items = getattr(node, "value", [])
                node = items[key] if isinstance(items, list) and key < len(items) else None
            else:
                node = next((v for k, v in getattr(node, "value", []) if getattr(k, "value", None) == key), None) \
                    if node.tag.endswith(":map") else None
        return node

    def of(self, *path: str | int) -> int:
        node = self.node(*path)
        return node.start_mark.line + 1 if node is not None else 0

    def text_start(self, *path: str | int) -> int:
        """Line of the first line of a scalar's text: a block scalar's (| or >) text starts below its indicator."""
        node = self.node(*path)
        if node is None:
            return 0
        return node.start_mark.line + (2 if getattr(node, "style", None) in ("|", ">") else 1)


def _unknown(data: dict, known: tuple[str, ...], where: str, lines: _Lines, path: tuple[str | int, ...],
             problems: list[str]) -> None:
    """One problem per unknown key of the mapping at ``path``, on the key's own line."""
    for key in sorted((k for k in data if k not in known), key=str):
        problems.append(f"line {lines.of(*path, key)}: {where}unknown key {key!r}; known: {list(known)}")


def _variables(raw: Any, lines: _Lines, problems: list[str]) -> list[Variable]:
    from lorafleet.templates.render import VariableError, check_value

    if not isinstance(raw, dict):
        problems.append(f"line {lines.of('variables')}: variables must be a mapping of name -> {{type: ...}}")
        return []
    out = []
    for name, spec in raw.items():
        line = lines.of("variables", name)
        if not isinstance(name, str) or not _IDENT.match(name):
            problems.append(f"line {line}: variable name {name!r} is not an identifier")
            continue
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            problems.append(f"line {line}: variable '{name}' must be a type name or a mapping")
            continue
        _unknown(spec, _VARIABLE_KEYS, f"variable '{name}': ", lines, ("variables", name), problems)
        vtype = spec.get("type", "string")
        if vtype not in VARIABLE_TYPES:
            problems.append(f"line {line}: variable '{name}': type must be one of {VARIABLE_TYPES}, got {vtype!r}")
            continue
        values = tuple(spec.get("values") or ())
        bad = _bad_limits(spec)
        if bad:
            problems.extend(f"line {line}: variable '{name}': {b}" for b in bad)
            continue
        if vtype == "enum" and not values:
            problems.append(f"line {line}: variable '{name}': an enum needs a non-empty 'values' list")
            continue
        try:
            var = Variable(name, vtype, bool(spec.get("required", "default" not in spec)) and "default" not in spec,
                           spec.get("default"), str(spec.get("description", "") or ""), spec.get("max_length"),
                           values, spec.get("minimum"), spec.get("maximum"), tuple(spec.get("examples") or ()), line)
            for value in ((var.default,) if var.default is not None else ()) + var.examples:
                check_value(var, value)
        except VariableError as e:
            problems.append(f"line {line}: {e}")
            continue
        out.append(var)
    return out


def _bad_limits(spec: dict) -> list[str]:
    bad = []
    length = spec.get("max_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        bad.append("max_length must be a positive integer")
    for key in ("minimum", "maximum"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            bad.append(f"{key} must be a number")
    return bad


def _sections(raw: Any, lines: _Lines, problems: list[str]) -> list[Section]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"line {lines.of('sections')}: sections must be a non-empty list")
        return []
    out: list[Section] = []
    for i, s in enumerate(raw):
        line = lines.of("sections", i)
        if not isinstance(s, dict):
            problems.append(f"line {line}: sections[{i}] must be a mapping")
            continue
        name = str(s.get("name", f"sections[{i}]"))
        _unknown(s, _SECTION_KEYS, f"section '{name}': ", lines, ("sections", i), problems)
        kind = s.get("kind", "system")
        if kind not in KIND_DEFAULTS:
            problems.append(f"line {line}: section '{name}': kind must be one of {list(KIND_DEFAULTS)}, got {kind!r}")
            continue
        scope, role = s.get("scope", KIND_DEFAULTS[kind][0]), s.get("role", KIND_DEFAULTS[kind][1])
        text = s.get("text")
        ignore = s.get("lint_ignore") or []
        bad = []
        if scope not in SCOPES:
            bad.append(f"scope must be one of {SCOPES}, got {scope!r}")
        if role not in ROLES:
            bad.append(f"role must be one of {ROLES}, got {role!r}")
        if not isinstance(text, str):
            bad.append("text must be a string")
        elif SENTINEL in text:
            bad.append("text must not contain U+E000 (lorafleet's static-prefix marker)")
        if any(o.name == name for o in out):
            bad.append("name is used by another section")
        if not isinstance(ignore, list):
            bad.append("lint_ignore must be a list of codes")
        if bad:
            problems.extend(f"line {line}: section '{name}': {b}" for b in bad)
            continue
        out.append(Section(name, kind, scope, role, text, bool(s.get("pinned", False)), tuple(map(str, ignore)),
                           line, lines.text_start("sections", i, "text")))
    return out
