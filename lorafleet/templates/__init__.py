"""Prefix-cache-aware prompt templates: the format, deterministic rendering and compiled artifacts.

Shared by ``optimize/templates`` (lint, compile, report), the gateway (``serve/gateway/templates.py``) and
``bench/templates.py``. Torch-free: anything that needs a tokenizer takes it as an argument.
"""

from lorafleet.templates.compiled import CompiledTemplate, StaticPrefix, load_compiled, load_compiled_templates, write_compiled
from lorafleet.templates.render import VariableError, canonical_json, normalize_text, render_messages, render_sections
from lorafleet.templates.spec import PER_REQUEST, STATIC, PromptTemplate, Section, Variable, load_template, parse_template

__all__ = [
    "CompiledTemplate", "PER_REQUEST", "PromptTemplate", "STATIC", "Section", "StaticPrefix", "Variable", "VariableError",
    "canonical_json", "load_compiled", "load_compiled_templates", "load_template", "normalize_text", "parse_template",
    "render_messages", "render_sections", "write_compiled",
]
