"""Deterministic rendering of a :class:`PromptTemplate` into chat messages.

The same variables always give the same bytes: JSON goes through :func:`canonical_json` (sorted keys, fixed
separators), each section's text is normalized (:func:`normalize_text`), and sections join with one blank
line. Jinja runs sandboxed with undefined names as errors and no clock, random or I/O globals. The model's
chat template is applied only in :mod:`lorafleet.chat` (see :mod:`lorafleet.templates.prefix`).
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorafleet.errors import ConfigError
from lorafleet.templates.spec import SENTINEL, PromptTemplate, Section, Variable

SECTION_SEPARATOR = "\n\n"
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


class VariableError(ConfigError):
    """A request's variables do not fit the template. ``variable`` names the (first) bad one."""

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, ``","``/``":"`` separators and raw UTF-8: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line ends, no trailing spaces on a line, at most one blank line in a row, no leading or
    trailing blank space."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    return _BLANK_RUNS.sub("\n\n", text).strip()


@functools.lru_cache(maxsize=1)
def environment():
    """The sandboxed Jinja environment of section text (built once)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                        autoescape=False, keep_trailing_newline=False)
    env.filters["canonical_json"] = canonical_json
    return env


@functools.lru_cache(maxsize=4096)
def _compiled(text: str):
    return environment().from_string(text)


def undeclared_names(section: Section, declared: set[str]) -> list[str]:
    """Problems of ``section``'s Jinja: syntax errors and names that are neither variables nor constants."""
    from jinja2 import TemplateSyntaxError, meta

    try:
        ast = environment().parse(section.text)
    except TemplateSyntaxError as e:
        return [f"line {section.text_line + e.lineno - 1}: section '{section.name}': Jinja syntax error: {e.message}"]
    unknown = sorted(meta.find_undeclared_variables(ast) - declared)
    return [f"line {section.text_line}: section '{section.name}' uses undeclared name(s) {unknown}; declare them "
            f"under variables (per request) or constants (fixed)"] if unknown else []


def referenced_names(section: Section) -> set[str]:
    """Names of variables or constants ``section``'s Jinja reads (loop variables excluded)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(environment().parse(section.text)))


# -- variables ----------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_value(var: Variable, value: Any) -> None:
    """Raise :class:`VariableError` unless ``value`` fits ``var``'s type and limits."""
    def fail(why: str) -> None:
        raise VariableError(f"variable '{var.name}': {why}", var.name)

    t = var.type
    if t == "string" and not isinstance(value, str):
        fail(f"expected a string, got {_type_name(value)} {value!r:.60}")
    if t == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        fail(f"expected an integer, got {_type_name(value)} {value!r:.60}")
    if t == "number" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        fail(f"expected a finite number, got {_type_name(value)} {value!r:.60}")
    if t == "boolean" and not isinstance(value, bool):
        fail(f"expected a boolean, got {_type_name(value)} {value!r:.60}")
    if t == "enum" and value not in var.values:
        fail(f"{value!r:.60} is not one of {list(var.values)}")
    if t == "json":
        try:
            canonical_json(value)
        except (TypeError, ValueError):
            fail(f"expected a JSON value, got {_type_name(value)}")
    if t in ("integer", "number"):
        if var.minimum is not None and value < var.minimum:
            fail(f"{value} is below the minimum {var.minimum}")
        if var.maximum is not None and value > var.maximum:
            fail(f"{value} is above the maximum {var.maximum}")
    if var.max_length is not None:
        length = len(value) if isinstance(value, str) else len(canonical_json(value))
        if length > var.max_length:
            fail(f"{length} characters is longer than max_length {var.max_length}")


def bind_variables(template: PromptTemplate, values: Mapping[str, Any]) -> dict[str, Any]:
    """Constants plus validated variables (defaults filled in): the context sections render with.

    Raises :class:`VariableError` listing every problem; its ``variable`` is the first bad name.
    """
    if not isinstance(values, Mapping):
        raise VariableError(f"variables must be an object, got {_type_name(values)}")
    problems: list[VariableError] = []
    for name in values:
        if template.variable(name) is None:
            known = ", ".join(v.name for v in template.variables) or "none"
            problems.append(VariableError(f"unknown variable '{name}' (template '{template.name}' takes: {known})", name))
    bound: dict[str, Any] = dict(template.constants)
    for var in template.variables:
        if var.name not in values:
            if var.required:
                problems.append(VariableError(f"missing required variable '{var.name}' ({var.type})", var.name))
            bound[var.name] = var.default if var.default is not None else ("" if var.type == "string" else None)
            continue
        try:
            check_value(var, values[var.name])
            bound[var.name] = values[var.name]
        except VariableError as e:
            problems.append(e)
    if problems:
        raise VariableError("; ".join(str(p) for p in problems), problems[0].variable)
    return bound


# -- rendering ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RenderedSection:
    name: str
    role: str
    is_static: bool
    text: str  #: normalized; never empty (sections that render to nothing are dropped)


def render_sections(template: PromptTemplate, values: Mapping[str, Any]) -> tuple[RenderedSection, ...]:
    """Each section rendered and normalized, in template order; empty ones left out."""
    from jinja2 import TemplateError

    context = bind_variables(template, values)
    out = []
    for s in template.sections:
        try:
            text = normalize_text(_compiled(s.text).render(context))
        except TemplateError as e:
            raise ConfigError(f"template '{template.name}', section '{s.name}': {e}") from None
        if text:
            out.append(RenderedSection(s.name, s.role, s.is_static, text))
    return tuple(out)


def to_messages(sections: tuple[RenderedSection, ...], mark_static_end: bool = False) -> list[dict[str, str]]:
    """Chat messages: consecutive sections of one role joined by a blank line.

    With ``mark_static_end``, :data:`SENTINEL` marks the end of static content: before the first per-request
    section, or after the last section if all are static, so the caller can find the static prefix in the
    chat-rendered text.
    """
    messages: list[dict[str, str]] = []
    marked = not mark_static_end
    for s in sections:
        text, joins = s.text, bool(messages) and messages[-1]["role"] == s.role
        if not marked and not s.is_static:
            # Inside a message the marker goes before the blank line: "\n\n" tokenizes differently alone than
            # before a word, so it is not a stable end of the prefix.
            marked = True
            if joins:
                messages[-1]["content"] += SENTINEL
            else:
                text = SENTINEL + text
        if joins:
            messages[-1]["content"] += SECTION_SEPARATOR + text
        else:
            messages.append({"role": s.role, "content": text})
    if not marked and messages:
        messages[-1]["content"] += SENTINEL
    return messages


def render_messages(template: PromptTemplate, values: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages of ``template`` for one request's ``values``."""
    return to_messages(render_sections(template, values))
