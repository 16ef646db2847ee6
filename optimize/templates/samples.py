"""Sample variable values for compile's and lint's checks: each variable's declared examples first, then
values chosen to provoke tokenization edge cases (a leading space, a newline, non-ASCII, one character)."""

from __future__ import annotations

from typing import Any

from lorafleet.templates.render import VariableError, check_value
from lorafleet.templates.spec import PromptTemplate, Variable

_BY_TYPE: dict[str, tuple[Any, ...]] = {
    "string": ("What is the status of my order?", " leading space and trailing space ", "x", "Line one\nline two",
               "¿Dónde está mi pedido? 🚚", "1234 is the code"),
    "integer": (0, 7, 12345),
    "number": (0.5, 3.0, 1234.25),
    "boolean": (True, False),
    "json": ({"id": 17, "tags": ["b", "a"], "name": "Ada"}, {}, [1, "two", None], "text"),
}


def _pool(var: Variable) -> list[Any]:
    base = list(var.values) if var.type == "enum" else list(_BY_TYPE[var.type])
    pool = list(var.examples) + base
    if var.type == "string" and var.max_length is not None:
        pool = [v[: var.max_length] for v in pool]
    if var.type in ("integer", "number"):
        lo = var.minimum if var.minimum is not None else float("-inf")
        hi = var.maximum if var.maximum is not None else float("inf")
        pool = [v for v in pool if lo <= v <= hi] or [var.minimum if var.minimum is not None else var.maximum]
    return [v for v in pool if _fits(var, v)] or [var.default]


def _fits(var: Variable, value: Any) -> bool:
    try:
        check_value(var, value)
        return True
    except VariableError:
        return False


def sample_values(template: PromptTemplate, num_samples: int) -> list[dict[str, Any]]:
    """``num_samples`` valid variable sets; every third leaves optional variables out."""
    pools = {v.name: _pool(v) for v in template.variables}
    out = []
    for i in range(num_samples):
        values = {}
        for var in template.variables:
            if not var.required and i % 3 == 2:
                continue
            pool = pools[var.name]
            values[var.name] = pool[i % len(pool)]
        out.append(values)
    return out
