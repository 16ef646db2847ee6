"""Structured outputs: JSON (any object, or valid under a JSON Schema), a regex, a choice among strings, an
EBNF/GBNF or Lark grammar, or a structural tag, enforced while decoding with xgrammar.

Each constrained sequence holds a :class:`Guide` (an xgrammar matcher over its compiled grammar). Every step
the sampler asks each constrained row's guide for the tokens the grammar allows next, as a packed bitmask
(one bit per vocabulary entry), and sets every other logit to -inf before picking; constrained and free rows
share the batch. Once a guide's grammar is complete it allows only the stop tokens, so the output always
parses. Whitespace between JSON tokens is fixed (``any_whitespace=False``): a small model cannot run into
max_tokens emitting blank lines.

Grammars are compiled once per distinct schema (the key is a SHA-256 of the compact schema text) and kept
in an LRU cache (:class:`GrammarCache`); a schema xgrammar cannot handle is a :class:`ConfigError` naming
the problem (HTTP 400).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from lorafleet.errors import ConfigError
from serve.engine.sampling_params import StructuredOutput

#: compiled grammars kept per engine (a compiled JSON-schema grammar is tens of KiB)
DEFAULT_CACHE_SIZE = 256
#: ``json_object`` means any JSON object, as in vLLM and OpenAI
JSON_OBJECT_SCHEMA = '{"type": "object"}'
_LOG_PREFIX = re.compile(r"^\[[0-9:]+\] [^:]+:\d+: ")


def schema_key(spec: StructuredOutput) -> str:
    """Cache key of a grammar: SHA-256 of its kind and compact schema text."""
    return hashlib.sha256(f"{spec.kind}\0{spec.schema}".encode()).hexdigest()


def _problem(e: Exception) -> str:
    """xgrammar's error text without its log prefix (``[12:00:00] /project/cpp/x.cc:42: ``)."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in str(e).strip().splitlines()]
    return next((line for line in lines if line), type(e).__name__)


def check_schema(schema: Any) -> None:
    """Raise :class:`ConfigError` if xgrammar cannot turn ``schema`` (parsed JSON) into a grammar. Needs no
    tokenizer, so the server can reject a bad schema before it starts streaming."""
    import xgrammar as xgr

    if not isinstance(schema, (dict, bool)):
        raise ConfigError(f"response_format json_schema.schema must be a JSON object, got {type(schema).__name__}")
    try:
        xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses from C++
        raise ConfigError(f"response_format: the JSON schema cannot be compiled: {_problem(e)}") from None


def choice_grammar(choices: list[str]) -> str:
    """EBNF whose language is exactly ``choices`` (each a JSON-escaped string literal, which xgrammar reads)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _structural_tag_args(text: str) -> tuple:
    """Arguments of xgrammar's structural-tag compilation: vLLM's ``{"structures": [{"begin", "schema", "end"}],
    "triggers"}`` form as (items, triggers), xgrammar's own format as its JSON text."""
    import xgrammar as xgr

    tag = json.loads(text)
    if isinstance(tag, dict) and "structures" in tag:
        items = [xgr.StructuralTagItem(begin=t["begin"], schema=json.dumps(t.get("schema") or {}), end=t["end"])
                 for t in tag["structures"]]
        return items, list(tag.get("triggers") or ())
    return (text,)


def is_ebnf(grammar: str) -> bool:
    """EBNF/GBNF rules read ``name ::= ...``; Lark's read ``name: ...``."""
    return "::=" in grammar


def check_spec(spec: StructuredOutput, param: str = "structured_outputs") -> None:
    """Raise :class:`ConfigError` naming ``param`` if xgrammar cannot build ``spec``'s grammar. Needs no
    tokenizer, so the server can reject it before it starts streaming."""
    import xgrammar as xgr

    try:
        if spec.kind == "regex":
            xgr.Grammar.from_regex(spec.schema)
        elif spec.kind in ("grammar", "choice"):
            text = choice_grammar(json.loads(spec.schema)) if spec.kind == "choice" else spec.schema
            xgr.Grammar.from_ebnf(text) if is_ebnf(text) else xgr.Grammar.from_lark(text)
        elif spec.kind == "structural_tag":
            xgr.Grammar.from_structural_tag(*_structural_tag_args(spec.schema))
        elif spec.kind == "json_schema":
            xgr.Grammar.from_json_schema(spec.schema, any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses from C++
        raise ConfigError(f"{param}: the {spec.kind} cannot be compiled: {_problem(e)}") from None


def _compile(compiler: Any, spec: StructuredOutput) -> Any:
    if spec.kind == "regex":
        return compiler.compile_regex(spec.schema)
    if spec.kind in ("grammar", "choice"):
        text = choice_grammar(json.loads(spec.schema)) if spec.kind == "choice" else spec.schema
        return compiler.compile_grammar(text) if is_ebnf(text) else compiler.compile_lark(text)
    if spec.kind == "structural_tag":
        return compiler.compile_structural_tag(*_structural_tag_args(spec.schema))
    schema = spec.schema if spec.kind == "json_schema" else JSON_OBJECT_SCHEMA
    return compiler.compile_json_schema(schema, any_whitespace=False)


class Guide:
    """Grammar state of one constrained sequence."""

    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]`` (int32 [rows, ceil(vocab / 32)])."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance past ``token_id``; ``False`` if the grammar does not allow it (state unchanged)."""
        return self._matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and a stop token was accepted."""
        return self._matcher.is_terminated()


@dataclass(slots=True)
class GrammarCacheStats:
    num_hits: int = 0
    num_misses: int = 0


class GrammarCache:
    """Compiles grammars for one tokenizer and keeps the latest ``max_entries`` by schema hash."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: frozenset[int],
                 max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._stop_token_ids = sorted(stop_token_ids)
        self._max_entries = max_entries
        self._compiler = None  # built on first use: reading the vocabulary takes ~0.5 s
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self.stats = GrammarCacheStats()

    def _get_compiler(self):
        if self._compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size,
                                                      stop_token_ids=self._stop_token_ids)
            # Our own LRU is the cache; one thread keeps compilation off the other cores of a shared CPU.
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler

    def compile(self, spec: StructuredOutput) -> Any:
        """The compiled grammar of ``spec`` (from the cache when seen before)."""
        key = schema_key(spec)
        compiled = self._compiled.get(key)
        if compiled is not None:
            self._compiled.move_to_end(key)
            self.stats.num_hits += 1
            return compiled
        self.stats.num_misses += 1
        try:
            compiled = _compile(self._get_compiler(), spec)
        except Exception as e:
            what = "JSON schema" if spec.kind.startswith("json") else spec.kind
            raise ConfigError(f"response_format: the {what} cannot be compiled: {_problem(e)}") from None
        self._compiled[key] = compiled
        if len(self._compiled) > self._max_entries:
            self._compiled.popitem(last=False)
        return compiled

    def guide(self, spec: StructuredOutput) -> Guide:
        """A fresh guide at the start of ``spec``'s grammar."""
        return Guide(self.compile(spec))


def allocate_bitmask(num_rows: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed packed bitmask, int32 [num_rows, ceil(vocab_size / 32)]."""
    import xgrammar as xgr

    return xgr.allocate_token_bitmask(num_rows, vocab_size)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set the logits of disallowed tokens to -inf, in place, in ``rows`` of ``logits`` [n, vocab]
    (``bitmask`` row i belongs to logits row i)."""
    import xgrammar as xgr

    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=logits.shape[-1], indices=rows)
