"""The trailer's JSON reader (``vmig.stream.vmdesc``): nesting depth measured before parsing
(brackets inside strings and escaped quotes do not count) and sizes of malformed bodies."""

from __future__ import annotations

import json
import random

import pytest

from vmig.errors import SchemaError
from vmig.stream.vmdesc import MAX_JSON_DEPTH, JsonObject, body_length, find_trailer, json_depth, parse_json
from vmig.testing import fixtures


def depth_of(value: object) -> int:
    """Nesting depth of a parsed value (an independent count: walks what json.loads built)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("text, depth", [
    (b"", 0),
    (b"5", 0),
    (b"[]", 1),
    (b'{"a": [[1], {"b": []}]}', 4),
    (b'["[[[[", "]]"]', 1),  # brackets inside strings
    (b'["\\"[[[", "{"]', 1),  # an escaped quote does not end the string
    (b'["\\\\", [[]]]', 3),  # an escaped backslash then the closing quote
    (b'["\\\\\\"[[", []]', 2),  # backslash, escaped quote, still inside
    (b"[" * 5000 + b"]" * 5000, MAX_JSON_DEPTH + 1),  # counted up to just past the bound
])
def test_json_depth(text, depth) -> None:
    assert json_depth(text) == depth


def test_json_depth_matches_the_parsed_value() -> None:
    rng = random.Random(3)
    atoms = ["a[", "\\", '"', "]{", 'x\\"[', "\\\\", "\u00e9[", "}", 0, None]

    def gen(d: int) -> object:
        r = rng.random()
        if d > 6 or r < 0.3:
            return rng.choice(atoms)
        if r < 0.6:
            return [gen(d + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(['k[', '\\"{', "q", "]"]): gen(d + 1) for _ in range(rng.randrange(3))}

    for _ in range(3000):
        value = gen(0)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert json_depth(text) == depth_of(value), text


def test_real_trailer_depth_and_parse() -> None:
    _, desc = find_trailer(fixtures.sample_s1().read_bytes())
    assert json_depth(desc.raw) == depth_of(json.loads(desc.raw))
    doc = parse_json(desc.raw)
    assert isinstance(doc, JsonObject) and doc.to_dict() == json.loads(desc.raw)


def test_json_object_keeps_the_first_of_duplicate_keys() -> None:
    doc = parse_json(b'{"a": 1, "b": 2, "a": 3}')
    assert doc["a"] == 1 and doc.getall("a") == [1, 3] and list(doc) == ["a", "b"]
    assert doc.has_duplicates() and not parse_json(b'{"a": 1}').has_duplicates()


@pytest.mark.parametrize("body", [{"fields": 5}, {"fields": "ab"}, {"subsections": 7},
                                  {"fields": [], "subsections": {"x": 1}}])
def test_body_length_of_a_body_whose_lists_are_not_lists(body) -> None:
    with pytest.raises(SchemaError):
        body_length(parse_json(json.dumps(body).encode()))
