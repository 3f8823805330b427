"""``json_depth``: the nesting bound applied to every description before it is parsed, checked
against the depth of the generated value itself, with strings full of brackets, quotes and
backslashes (which must not count)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from vmig.stream.vmdesc import MAX_JSON_DEPTH, json_depth

tricky = st.text(alphabet='[]{}"\\ab\u00e9\n', max_size=8)
values = st.recursive(
    st.none() | st.integers() | tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky, inner, max_size=3),
    max_leaves=40,
)


def depth(v: object) -> int:
    if isinstance(v, dict):
        return 1 + max([depth(x) for x in v.values()], default=0)
    if isinstance(v, list):
        return 1 + max([depth(x) for x in v], default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(v=values, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_depth_of_generated_json(v, ascii_only, indent) -> None:
    raw = json.dumps(v, ensure_ascii=ascii_only, indent=indent).encode()
    assert json_depth(raw) == depth(v)


def test_deep_nesting_is_counted_past_the_bound_only() -> None:
    assert json_depth(b"[" * 50 + b"]" * 50) == 50
    assert json_depth(b'{"a":' * 30 + b"1" + b"}" * 30) == 30
    assert json_depth(b"[" * 5000 + b"]" * 5000) == MAX_JSON_DEPTH + 1
    assert json_depth(b'"[[[[" ') == 0


def test_unpaired_brackets_stop_the_count() -> None:
    assert json_depth(b"[" * 5000) == 0  # not JSON: the parser refuses it
    assert json_depth(b"[[]") == 1
