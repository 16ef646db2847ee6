"""``lorafleet optimize templates lint``: cache-busting patterns in a template, each with a line and a fix.

Template checks (no model needed):

* ``volatile-in-static``: a date, time, UUID, random id or counter (literal, or a variable whose name says
  so) in a static section or a constant;
* ``per-request-in-static``: a static section that uses a per-request variable;
* ``per-request-before-static``: a per-request section placed before static content;
* ``non-canonical-json``: JSON rendered without ``canonical_json`` or written literally in non-canonical form.

The chat-template checks (``chat-template-volatile``, ``chat-template-reorders``) are in chat_lint.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorafleet.templates.render import environment
from lorafleet.templates.spec import PromptTemplate, Section
from optimize.templates.patterns import VOLATILE_NAME, blank_jinja, json_literals, line_of, volatile_hits

ERROR, WARNING = "error", "warning"
CODES = ("volatile-in-static", "per-request-in-static", "per-request-before-static", "non-canonical-json",
         "chat-template-volatile", "chat-template-reorders")


@dataclass(frozen=True, slots=True)
class Finding:
    code: str  #: one of CODES
    severity: str  #: ``error`` (breaks prefix caching) or ``warning`` (likely to)
    line: int  #: 1-based line in ``file`` (0 if unknown)
    message: str
    fix: str  #: the suggested change
    section: str | None = None
    file: str = ""  #: the template file, or the chat template's origin for chat-template findings

    def format(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity} [{self.code}] {self.message}\n    fix: {self.fix}"


def lint_template(template: PromptTemplate) -> list[Finding]:
    """The model-independent findings of ``template``, in line order (``lint_ignore`` respected)."""
    file = str(template.source or f"<{template.name}>")
    findings: list[Finding] = []
    for s in template.sections:
        found = _section_findings(template, s) + _json_findings(template, s)
        findings += [_at(f, file) for f in found if f.code not in s.lint_ignore]
    findings += [_at(f, file) for f in _order_findings(template)]
    findings += [_at(f, file) for f in _constant_findings(template)]
    return sorted(findings, key=lambda f: (f.line, f.code))


def _at(f: Finding, file: str) -> Finding:
    return Finding(f.code, f.severity, f.line, f.message, f.fix, f.section, file)


def _names(section: Section) -> list[tuple[str, int]]:
    """(name, file line) of every variable or constant a section's Jinja reads."""
    from jinja2 import nodes

    ast = environment().parse(section.text)
    return [(n.name, section.text_line + n.lineno - 1) for n in ast.find_all(nodes.Name) if n.ctx == "load"]


def _section_findings(t: PromptTemplate, s: Section) -> list[Finding]:
    if not s.is_static:
        return []
    out = []
    for name, line in _names(s):
        var = t.variable(name)
        if var is None:
            continue
        fix = (f"move {{{{ {name} }}}} into a per-request section (kind: context) placed after the static sections, "
               f"or make it a constant if it is the same for every request")
        if VOLATILE_NAME.search(name):
            out.append(Finding("volatile-in-static", ERROR, line, f"static section '{s.name}' renders per-request "
                               f"variable '{name}', which changes on every request, so no two prompts share this "
                               "section's KV cache", fix, s.name))
        else:
            out.append(Finding("per-request-in-static", ERROR, line, f"static section '{s.name}' uses per-request "
                               f"variable '{name}'; the section differs between requests", fix, s.name))
    text = blank_jinja(s.text)
    for hit in volatile_hits(text):
        out.append(Finding("volatile-in-static", WARNING, line_of(text, hit.offset, s.text_line),
                           f"static section '{s.name}' contains {hit.what} ({hit.text!r}); if it is regenerated per "
                           "request or per day, every change invalidates the cached prefix",
                           "remove it, or pass it as a variable in a per-request section after the static ones", s.name))
    return out


def _json_findings(t: PromptTemplate, s: Section) -> list[Finding]:
    from jinja2 import nodes

    out = []
    ast = environment().parse(s.text)
    for output in ast.find_all(nodes.Output):
        for expr in output.nodes:
            if isinstance(expr, nodes.TemplateData):
                continue
            inner, filt = (expr.node, expr.name) if isinstance(expr, nodes.Filter) else (expr, None)
            if not (isinstance(inner, nodes.Name) and _is_json(t, inner.name)) or filt == "canonical_json":
                continue
            line = s.text_line + expr.lineno - 1
            fix = f"render it as {{{{ {inner.name} | canonical_json }}}} (sorted keys, fixed separators)"
            if filt == "tojson":
                out.append(Finding("non-canonical-json", WARNING, line, f"'{inner.name} | tojson' HTML-escapes <, >, & "
                                   "and ' and uses ', '/': ' separators, so it differs from the JSON other tools send",
                                   fix, s.name))
            else:
                how = f"'| {filt}'" if filt else "Python's repr"
                out.append(Finding("non-canonical-json", ERROR, line, f"JSON value '{inner.name}' is rendered with {how}: "
                                   "key order follows the client, so equal values can render differently", fix, s.name))
    if s.is_static:
        text = blank_jinja(s.text)
        for lit in json_literals(text):
            if lit.text != lit.canonical:
                out.append(Finding("non-canonical-json", WARNING, line_of(text, lit.offset, s.text_line),
                                   f"literal JSON in section '{s.name}' is not canonical (key order or spacing); code "
                                   "that regenerates it may not reproduce these bytes",
                                   f"move it under constants: and render {{{{ NAME | canonical_json }}}}, which gives "
                                   f"{_short(lit.canonical)}", s.name))
    return out


def _is_json(t: PromptTemplate, name: str) -> bool:
    var = t.variable(name)
    if var is not None:
        return var.type == "json"
    return isinstance(t.constants.get(name), (dict, list))


def _order_findings(t: PromptTemplate) -> list[Finding]:
    out = []
    for i, s in enumerate(t.sections):
        later_static = [o.name for o in t.sections[i + 1:] if o.is_static]
        if s.is_static or not later_static or "per-request-before-static" in s.lint_ignore:
            continue
        fix = (f"unpin '{s.name}' or move static sections {later_static} before it" if s.pinned else
               f"move '{s.name}' after {later_static[-1]!r} (lorafleet optimize templates compile --reorder does this)")
        out.append(Finding("per-request-before-static", ERROR, s.line, f"per-request section '{s.name}' comes before "
                           f"static section(s) {later_static}: every request recomputes them instead of reusing the "
                           "cache", fix, s.name))
    return out


def _constant_findings(t: PromptTemplate) -> list[Finding]:
    out = []
    for name, value in t.constants.items():
        for leaf in _strings(value):
            for hit in volatile_hits(leaf):
                out.append(Finding("volatile-in-static", WARNING, t.constant_lines.get(name, 0),
                                   f"constant '{name}' contains {hit.what} ({hit.text!r}); constants are part of the "
                                   "static prefix", "remove it, or make it a per-request variable rendered after the "
                                   "static sections"))
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
