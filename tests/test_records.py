"""vmig.records against the standard library's dataclasses (the oracle): the same declaration
must give the same constructor, defaults, equality, hashing, repr, replace, frozenness and
pickling, for random field lists and options."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmig import records
from vmig.records import FrozenInstanceError, field, record, replace

FIELD_NAMES = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "g"]), min_size=0, max_size=5, unique=True)
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.tuples(st.integers(0, 3)))
OPTIONS = st.fixed_dictionaries({"frozen": st.booleans(), "slots": st.booleans()})
#: per field: (has default, default kind, compare, repr)
FIELD_SPECS = st.tuples(st.booleans(), st.sampled_from(["value", "factory"]), st.booleans(), st.booleans())

# a module for the generated classes, so that pickle can find them by name
_MOD = types.ModuleType("vmig_records_test_classes")
sys.modules[_MOD.__name__] = _MOD


def _declare(deco, fld, names, specs, defaults):
    """The same class body for both decorators; defaults only after the non-default fields."""
    ns = {"__annotations__": {}, "__module__": _MOD.__name__}
    ordered = sorted(zip(names, specs, defaults), key=lambda t: t[1][0])  # defaults last
    for name, (has_default, kind, compare, show), default in ordered:
        ns["__annotations__"][name] = "object"
        opts = {}
        if not compare:
            opts["compare"] = False
        if not show:
            opts["repr"] = False
        if has_default:
            if kind == "factory":
                opts["default_factory"] = lambda default=default: [default]
            else:
                opts["default"] = default
        if opts:
            ns[name] = fld(**opts)
    return deco(type("C", (), ns)), [n for n, _, _ in ordered]


def _outcome(fn):
    try:
        return ("ok", fn())
    except (TypeError, AttributeError) as e:
        frozen = isinstance(e, (dataclasses.FrozenInstanceError, FrozenInstanceError))
        return ("frozen" if frozen else type(e).__name__, None)


@settings(max_examples=300, deadline=None)
@given(names=FIELD_NAMES, data=st.data(), options=OPTIONS)
def test_record_behaves_as_dataclass(names, data, options) -> None:
    specs = [data.draw(FIELD_SPECS) for _ in names]
    defaults = [data.draw(VALUES) for _ in names]
    D, order = _declare(dataclasses.dataclass(**options), dataclasses.field, names, specs, defaults)
    R, order_r = _declare(record(**options), field, names, specs, defaults)
    assert order == order_r
    assert R.__match_args__ == D.__match_args__ == tuple(order)
    args = [data.draw(VALUES) for _ in order]
    cut = data.draw(st.integers(0, len(order)))
    # positional prefix, keywords for a random subset of the rest
    kw_names = [n for n in order[cut:] if data.draw(st.booleans())]
    call_kw = {n: args[order.index(n)] for n in kw_names}
    d = _outcome(lambda: D(*args[:cut], **call_kw))
    r = _outcome(lambda: R(*args[:cut], **call_kw))
    assert d[0] == r[0]
    if d[0] != "ok":
        return
    dv, rv = d[1], r[1]
    assert [getattr(rv, n) for n in order] == [getattr(dv, n) for n in order]
    assert repr(rv).replace("C(", "", 1) == repr(dv).split("C(", 1)[1]
    twin = R(*[getattr(rv, n) for n in order])
    assert (rv == twin) == (dv == D(*[getattr(dv, n) for n in order]))
    assert (D.__hash__ is None) == (R.__hash__ is None)
    if D.__hash__ is not None:  # the same hash (of the compared fields), or both unhashable
        assert _outcome(lambda: hash(rv)) == _outcome(lambda: hash(dv))
    assert hasattr(rv, "__dict__") == hasattr(dv, "__dict__")
    if order:
        new = data.draw(VALUES)
        assert _outcome(lambda: setattr(rv, order[0], new))[0] == _outcome(lambda: setattr(dv, order[0], new))[0]
        changed_d = dataclasses.replace(dv, **{order[0]: new})
        changed_r = replace(rv, **{order[0]: new})
        assert [getattr(changed_r, n) for n in order] == [getattr(changed_d, n) for n in order]
    _MOD.C = R
    for clone in (pickle.loads(pickle.dumps(rv)), copy.copy(rv), copy.deepcopy(rv)):
        assert [getattr(clone, n) for n in order] == [getattr(rv, n) for n in order]
        assert type(clone) is R


def test_frozen_error_is_an_attribute_error_and_init_false_fields() -> None:
    @record(frozen=True, slots=True)
    class P:
        x: int
        y: list = field(default_factory=list, compare=False)

    p = P(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x  # type: ignore[misc]
    assert P(1, [1]) == P(1, [2]) and hash(P(1, [1])) == hash(P(1))
    assert records.asdict(P(3, [4])) == {"x": 3, "y": [4]}

    @record
    class Q:
        a: int
        b: int = field(init=False, default=7)
        seen: list = field(init=False, default_factory=list)

        def __post_init__(self) -> None:
            self.seen.append(self.a)

    q = Q(5)
    assert (q.a, q.b, q.seen) == (5, 7, [5])
    with pytest.raises(TypeError, match="unexpected keyword argument 'b'"):
        Q(1, b=2)
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        Q(1, a=2)
    with pytest.raises(TypeError, match="missing required argument: 'a'"):
        Q()
    with pytest.raises(TypeError, match="takes 1 positional arguments but 2"):
        Q(1, 2)


def test_inherited_fields_come_first() -> None:
    @record(frozen=True)
    class Base:
        a: int

    @record(frozen=True)
    class Child(Base):
        b: int = 2

    c = Child(1)
    assert (c.a, c.b) == (1, 2) and Child.__match_args__ == ("a", "b")
    assert [f.name for f in records.fields(c)] == ["a", "b"]
    assert c != Base(1) and repr(c).endswith("Child(a=1, b=2)")


def test_a_default_before_a_required_field_is_refused() -> None:
    with pytest.raises(TypeError, match="non-default field 'b' follows a default field"):
        @record
        class Bad:
            a: int = 1
            b: int
