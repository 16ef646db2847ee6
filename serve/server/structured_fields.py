"""vLLM's constrained-output request fields → the engine's :class:`StructuredOutput`.

Accepted, one at a time (two are a 400 naming the second):

* ``response_format`` (OpenAI's, see :mod:`serve.server.response_format`), also vLLM's ``{"type":
  "structural_tag", "structures", "triggers"}``;
* ``structured_outputs``: ``{"json": schema}``, ``{"regex": str}``, ``{"choice": [str, ...]}``, ``{"grammar":
  EBNF/GBNF or Lark text}``, ``{"json_object": true}``, ``{"structural_tag": JSON text}``; besides the one
  constraint it may say ``disable_fallback`` (we never fall back) and ``disable_any_whitespace: true`` (what we
  always do); any other key, or ``disable_any_whitespace: false``, is a 400 naming it;
* the legacy ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar`` and (chat)
  ``structural_tag``; ``guided_decoding_backend`` may only name xgrammar; ``guided_whitespace_pattern`` is a 400.

Every grammar is compiled once here (tokenizer-free) so that a bad one is a 400 before any streaming starts.
"""

from __future__ import annotations

import json
from typing import Any

from lorafleet.errors import ConfigError
from serve.engine.sampling_params import StructuredOutput
from serve.engine.structured import check_spec
from serve.server.errors import HTTPError
from serve.server.protocol import ChatCompletionRequest, CompletionRequest
from serve.server.response_format import schema_output, structured_output

CONSTRAINT_KEYS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
#: structured_outputs keys we accept besides the constraint, with the values that match what we do
OPTION_VALUES = {"disable_fallback": (True, False, None), "disable_any_whitespace": (True, None),
                 "disable_additional_properties": (False, None), "whitespace_pattern": (None,)}
BACKENDS = (None, "auto", "xgrammar")


def _fail(param: str, message: str) -> HTTPError:
    return HTTPError(400, f"{param}: {message}", param)


def _checked(spec: StructuredOutput, param: str) -> StructuredOutput:
    try:
        check_spec(spec, param)
    except ConfigError as e:
        raise HTTPError(400, str(e), param) from None
    return spec


def constraint(kind: str, value: Any, param: str) -> StructuredOutput | None:
    """One constraint (a ``structured_outputs`` key or a ``guided_*`` field) checked and compiled."""
    if value is None:
        return None
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise _fail(param, f"the JSON schema is not valid JSON: {e}") from None
        return schema_output(value, param)
    if kind == "json_object":
        if value is not True:
            raise _fail(param, "must be true when given")
        return StructuredOutput("json_object")
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise _fail(param, "must be a non-empty list of non-empty strings")
        return _checked(StructuredOutput("choice", json.dumps(value, ensure_ascii=False)), param)
    if not isinstance(value, str) or not value:
        raise _fail(param, "must be a non-empty string")
    if kind == "structural_tag":
        try:
            json.loads(value)
        except json.JSONDecodeError as e:
            raise _fail(param, f"is not valid JSON: {e}") from None
    return _checked(StructuredOutput(kind, value), param)


def _from_structured_outputs(raw: Any) -> list[tuple[str, StructuredOutput]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise _fail("structured_outputs", "must be an object")
    for key, value in raw.items():
        if key not in CONSTRAINT_KEYS and (key not in OPTION_VALUES or value not in OPTION_VALUES[key]):
            raise HTTPError(400, f"structured_outputs.{key} = {json.dumps(value)[:40]} is not supported",
                            f"structured_outputs.{key}")
    found = [(f"structured_outputs.{k}", constraint(k, raw[k], f"structured_outputs.{k}"))
             for k in CONSTRAINT_KEYS if raw.get(k) is not None]
    if not found:
        raise _fail("structured_outputs", f"needs one of {', '.join(CONSTRAINT_KEYS)}")
    return found


def request_structured(req: CompletionRequest | ChatCompletionRequest) -> StructuredOutput | None:
    """The request's single output constraint, or None; 400 naming the field on any problem."""
    if req.guided_decoding_backend not in BACKENDS:
        raise _fail("guided_decoding_backend", f"only xgrammar is available, got {req.guided_decoding_backend!r}")
    if req.guided_whitespace_pattern is not None:
        raise _fail("guided_whitespace_pattern", "is not supported (JSON whitespace is fixed)")
    found: list[tuple[str, StructuredOutput]] = []
    fmt = req.response_format or {}
    if fmt.get("type") == "structural_tag":
        found.append(("response_format", constraint("structural_tag", json.dumps(fmt), "response_format")))
    elif (spec := structured_output(req.response_format)) is not None:
        found.append(("response_format", spec))
    found += _from_structured_outputs(req.structured_outputs)
    legacy = {"guided_json": ("json", req.guided_json), "guided_regex": ("regex", req.guided_regex),
              "guided_choice": ("choice", req.guided_choice), "guided_grammar": ("grammar", req.guided_grammar),
              "structural_tag": ("structural_tag", getattr(req, "structural_tag", None))}
    found += [(name, constraint(kind, value, name)) for name, (kind, value) in legacy.items() if value is not None]
    if len(found) > 1:
        raise _fail(found[1][0], f"only one output constraint may be set, but {found[0][0]} is set too")
    return found[0][1] if found else None
