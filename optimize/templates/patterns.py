"""Text patterns that mark content as volatile (changing per request or per day), and literal JSON that is
not canonical. Pure functions over strings; lint.py turns their hits into findings with lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
#: (what, pattern) for literal values that should not sit in static text
VOLATILE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an ISO timestamp", re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?")),
    ("a date", re.compile(rf"\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b|\b{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b"
                          rf"|\b\d{{1,2}} {_MONTH} \d{{4}}\b", re.IGNORECASE)),
    ("a time of day", re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\s?(?:am|pm|utc|gmt)?\b", re.IGNORECASE)),
    ("a UUID", re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)),
    ("a Unix timestamp", re.compile(r"\b1[5-9]\d{8}(?:\d{3})?\b")),
    ("a random id", re.compile(r"\b[0-9a-f]{16,}\b|\b(?:req|request|sess|session|trace|span|msg|run|conv)[-_][A-Za-z0-9]{6,}\b",
                               re.IGNORECASE)),
    ("a counter", re.compile(r"\b(?:request|req|turn|message|ticket|call|attempt|visit|session|conversation)\s*"
                             r"(?:#|no\.?|number)\s*\d+", re.IGNORECASE)),
)
#: variable names that suggest a value changing per request
VOLATILE_NAME = re.compile(r"(?:^|_)(?:now|today|date|time|timestamp|datetime|ts|uuid|nonce|random|rand|counter|"
                           r"seq|request_id|req_id|trace_id|session_id|id)(?:$|_)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Hit:
    what: str  #: e.g. "a date"
    text: str  #: the matched text
    offset: int  #: character offset in the scanned string


def volatile_hits(text: str) -> list[Hit]:
    """Volatile-looking literals in ``text``, at most one per span (the first pattern that matches wins)."""
    hits: list[Hit] = []
    taken: list[tuple[int, int]] = []
    for what, pattern in VOLATILE_PATTERNS:
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            taken.append((m.start(), m.end()))
            hits.append(Hit(what, m.group(0), m.start()))
    return sorted(hits, key=lambda h: h.offset)


def blank_jinja(text: str) -> str:
    """``text`` with Jinja tags and comments replaced by spaces (newlines kept), so offsets and lines stay put."""
    return re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.DOTALL)


@dataclass(frozen=True, slots=True)
class JsonLiteral:
    offset: int
    text: str  #: as written
    canonical: str  #: canonical_json of the same value


def json_literals(text: str) -> Iterator[JsonLiteral]:
    """JSON objects and arrays (with at least one string inside) written literally in ``text``."""
    decoder = json.JSONDecoder()
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            span = text[i:end]
            if isinstance(value, (dict, list)) and value and '"' in span:
                yield JsonLiteral(i, span, json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
            i = end
        else:
            i += 1


def line_of(text: str, offset: int, first_line: int) -> int:
    """1-based file line of ``offset`` in ``text`` whose first line is file line ``first_line``."""
    return first_line + text.count("\n", 0, offset)
