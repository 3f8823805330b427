"""Value classes declared like dataclasses, built without generating code.

``dataclasses`` writes each class's ``__init__``, ``__repr__``, ``__eq__`` (and, frozen,
``__setattr__``/``__delattr__``/``__hash__``) as source text and compiles it when the module is
imported: 0.3-1 ms per class. A stream command imports some 30 value classes, so that was about a
tenth of a short command's run (``vmig analyze`` of a booted guest's capture: 25 ms of ~180 ms,
measured). :func:`record` gives a class declared the same way (annotations, defaults,
:func:`field` with ``default_factory``/``compare``/``repr``/``hash``/``init``) the same
behaviour from functions shared by every class, built once here.

What a record class gets (as ``dataclass`` with the same options would):

* ``__init__`` taking the fields in declaration order, positionally or by name, with defaults
  and default factories, then ``__post_init__()`` when the class defines it;
* ``__repr__`` (``Name(a=1, b=2)``, fields with ``repr=False`` left out), ``__eq__`` (same
  class, equal compared fields), ``__match_args__``;
* ``frozen=True``: assigning or deleting an attribute raises :class:`FrozenInstanceError`;
  ``__hash__`` from the compared fields (unhashable when ``eq`` and not frozen);
* ``slots=True``: the class is rebuilt with ``__slots__`` (no instance ``__dict__``); pickling
  and ``copy`` work for frozen ones.

:func:`replace`, :func:`asdict` and :func:`fields` work on record instances. Inheritance
between record classes adds the subclass's fields after the base's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

__all__ = ["record", "field", "fields", "replace", "asdict", "Field", "FrozenInstanceError"]

T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen record was assigned or deleted."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One field of a record class (what :func:`field` declares)."""

    __slots__ = ("name", "default", "default_factory", "init", "repr", "compare", "hash")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, init: bool = True,
                 repr: bool = True, compare: bool = True, hash: bool | None = None) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare
        self.hash = compare if hash is None else hash

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING,
          init: bool = True, repr: bool = True, compare: bool = True,
          hash: bool | None = None) -> Any:
    """Declare a field's default or options (as ``dataclasses.field``)."""
    return Field(default, default_factory, init, repr, compare, hash)


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in declaration order."""
    try:
        return obj.__record_fields__  # type: ignore[no-any-return]
    except AttributeError:
        raise TypeError(f"{obj!r} is not a record") from None


def replace(obj: T, **changes: Any) -> T:
    """A new instance of ``obj``'s class with ``changes`` applied to its init fields."""
    for f in fields(obj):
        if f.init and f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return obj.__class__(**changes)  # type: ignore[no-any-return]


def asdict(obj: Any) -> dict[str, Any]:
    """``{name: value}`` of a record instance's fields (values not copied)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__qualname__", "")
    return str(text).startswith(("ClassVar", "typing.ClassVar"))


def _collect(cls: type) -> tuple[list[Field], list[str]]:
    """(every field including inherited ones, the names this class adds)."""
    out: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__record_fields__", ()):
            out[f.name] = f
    own = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name = name
        out[name] = f
        own.append(name)
    all_fields = list(out.values())
    seen_default = False
    for f in all_fields:
        if not f.init:
            continue
        if f.default is not MISSING or f.default_factory is not MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default field {f.name!r} follows a default field in {cls.__name__}")
    return all_fields, own


def _make_init(cls_name: str, flds: list[Field], has_post_init: bool) -> Callable[..., None]:
    specs = tuple((f.name, f.default, f.default_factory) for f in flds if f.init)
    names = tuple(name for name, _, _ in specs)
    n = len(names)
    extra = tuple((f.name, f.default, f.default_factory) for f in flds if not f.init
                  and (f.default is not MISSING or f.default_factory is not MISSING))
    setattr_ = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = len(args)
        if given > n:
            raise TypeError(f"{cls_name}() takes {n} positional arguments but {given} were given")
        for name, value in zip(names, args):
            setattr_(self, name, value)
        if given < n:
            for name, default, factory in specs[given:]:
                value = kwargs.pop(name, MISSING)
                if value is MISSING:
                    if factory is not MISSING:
                        value = factory()
                    elif default is MISSING:
                        raise TypeError(f"{cls_name}() missing required argument: {name!r}")
                    else:
                        value = default
                setattr_(self, name, value)
        if kwargs:
            key = next(iter(kwargs))
            what = "multiple values for argument" if key in names else "an unexpected keyword argument"
            raise TypeError(f"{cls_name}() got {what} {key!r}")
        for name, default, factory in extra:
            setattr_(self, name, default if factory is MISSING else factory())
        if has_post_init:
            self.__post_init__()

    return __init__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _slots_getstate(self: Any) -> list[Any]:
    return [getattr(self, f.name) for f in self.__record_fields__]


def _slots_setstate(self: Any, state: list[Any]) -> None:
    for f, value in zip(self.__record_fields__, state):
        object.__setattr__(self, f.name, value)


def _build(cls: type, frozen: bool, slots: bool, eq: bool, repr_: bool) -> type:
    flds, own = _collect(cls)
    if slots:
        ns = dict(cls.__dict__)
        for name in own:
            ns.pop(name, None)
        ns.pop("__dict__", None)
        ns.pop("__weakref__", None)
        inherited = {s for base in cls.__mro__[1:] for s in base.__dict__.get("__slots__", ())}
        ns["__slots__"] = tuple(name for name in own if name not in inherited)
        if frozen:
            ns["__getstate__"] = _slots_getstate
            ns["__setstate__"] = _slots_setstate
        new = type(cls)(cls.__name__, cls.__bases__, ns)
        new.__qualname__ = cls.__qualname__
        cls = new
    else:
        for name in own:
            # class attributes stay only as what dataclass leaves: plain defaults
            f = next(f for f in flds if f.name == name)
            if isinstance(cls.__dict__.get(name), Field):
                if f.default is MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, f.default)
    cls.__record_fields__ = tuple(flds)  # type: ignore[attr-defined]
    cls.__match_args__ = tuple(f.name for f in flds if f.init)  # type: ignore[attr-defined]
    if "__init__" not in cls.__dict__:
        cls.__init__ = _make_init(cls.__name__, flds, hasattr(cls, "__post_init__"))  # type: ignore[misc]
    compared = tuple(f.name for f in flds if f.compare)
    hashed = tuple(f.name for f in flds if f.hash)

    def key(obj: Any, names: tuple[str, ...] = compared) -> tuple[Any, ...]:
        return tuple([getattr(obj, name) for name in names])

    if repr_ and "__repr__" not in cls.__dict__:
        shown = tuple(f.name for f in flds if f.repr)

        def __repr__(self: Any) -> str:
            inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
            return f"{self.__class__.__qualname__}({inner})"

        cls.__repr__ = __repr__  # type: ignore[method-assign]
    if eq and "__eq__" not in cls.__dict__:

        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return key(self) == key(other)

        cls.__eq__ = __eq__  # type: ignore[method-assign]
    if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
        if eq and frozen:
            cls.__hash__ = lambda self: hash(key(self, hashed))  # type: ignore[method-assign]
        elif eq:
            cls.__hash__ = None  # type: ignore[assignment]
    if frozen:
        cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign,assignment]
        cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign,assignment]
    return cls


@dataclass_transform(field_specifiers=(field, Field))  # type checkers see dataclass semantics
def record(cls: type[T] | None = None, /, *, frozen: bool = False, slots: bool = False,
           eq: bool = True, repr: bool = True) -> Any:
    """Class decorator: a record class (see the module docstring); ``@record`` or
    ``@record(frozen=True, slots=True)``."""

    def wrap(c: type[T]) -> type[T]:
        return _build(c, frozen, slots, eq, repr)  # type: ignore[return-value]

    return wrap if cls is None else wrap(cls)
