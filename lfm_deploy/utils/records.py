"""Typed records parsed once from JSON: frozen dataclasses, read by one validator (`parse`).

The runtime imports with numpy, onnxruntime and Pillow alone, so this is the stdlib's share of
what msgspec does: a record is a frozen dataclass whose annotations say what each JSON value must
be (`bool`, `int`, `float`, `str`, `Literal`, `X | None`, `tuple[X, ...]`, `Mapping[str, X]`,
another record, or `Any` for a free-form JSON value), constraints ride on
`Annotated[..., Meta(...)]` (msgspec's `Meta`), and `parse` walks value and annotations together,
collecting every problem as "<field> must be <what>, got <value>". Unknown keys are ignored;
containers come back immutable (tuples and `FrozenDict`), so a parsed record is immutable all the
way down. `to_json` is the inverse (optional fields that are None are left out).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal, Mapping, Union

__all__ = ["FrozenDict", "Meta", "freeze", "json_type", "parse", "show", "to_json"]


class FrozenDict(dict):
    """A dict that refuses changes: a parsed record stays as read without defensive copies."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a parsed record is immutable; build a new one (dataclasses.replace)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # pickles (Ray's object store) and copies without going through __setitem__
        return FrozenDict, (dict(self),)


def freeze(value: Any) -> Any:
    """A JSON value with its lists as tuples and its objects as `FrozenDict`s."""
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Meta:
    """Constraints on one annotated value (msgspec's `Meta`): numeric bounds, a list's exact or
    least length (a string's least length), a string's full-match `pattern` described as `what`,
    and `check`, a function saying why a value is refused (None when it is fine)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    length: int | None = None
    min_length: int | None = None
    pattern: str | None = None
    what: str | None = None
    check: Callable[[Any], str | None] | None = None

    def bounds(self) -> str:
        parts = [f">= {self.ge}"] * (self.ge is not None) + [f"> {self.gt}"] * (self.gt is not None) + \
            [f"<= {self.le}"] * (self.le is not None)
        return " " + " and ".join(parts) if parts else ""


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


def show(value: Any, limit: int = 40) -> str:
    """A value's repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_NONE = type(None)
_MAPPINGS = (collections.abc.Mapping, Mapping, dict)
_SCALARS = {bool: ("a boolean", (bool,)), int: ("an integer", (int,)), float: ("a finite number", (int, float)),
            str: ("a string", (str,))}


def _split(tp) -> tuple[Any, Meta]:
    """(the type, its Meta) of a possibly Annotated type."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        return base, next((m for m in extras if isinstance(m, Meta)), Meta())
    return tp, Meta()


def _options(tp) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def _expected(tp) -> str:
    """How a value of type `tp` is described in a problem ("an integer >= 1 or a string")."""
    opts = _options(tp)
    if len(opts) > 1:
        text = " or ".join(_expected(o) for o in opts if o is not _NONE)
        return text + (" or null" if _NONE in opts else "")
    base, meta = _split(tp)
    origin = typing.get_origin(base)
    if base in _SCALARS:
        return _SCALARS[base][0] + (meta.bounds() if base in (int, float) else "")
    if origin is tuple:
        return "a list" + (f" of {meta.length} items" if meta.length is not None else
                           f" of at least {meta.min_length} item{'s' * (meta.min_length != 1)}" if meta.min_length
                           else "")
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(base)))
    return "an object" if origin in _MAPPINGS or dataclasses.is_dataclass(base) else "a value"


def _type_ok(tp, value) -> bool:
    base, _ = _split(tp)
    if base is Any:
        return True
    if base is _NONE:
        return value is None
    if isinstance(value, bool) and base is not bool:
        return typing.get_origin(base) is Literal and value in typing.get_args(base)
    if base in _SCALARS:
        return isinstance(value, _SCALARS[base][1])
    origin = typing.get_origin(base)
    if origin is tuple:
        return isinstance(value, list)
    if origin is Literal:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return isinstance(value, dict)


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _child(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp, value, where: str, problems: list[str], key: str | None = None):
    fitting = next((o for o in _options(tp) if _type_ok(o, value)), None)
    if fitting is None:
        problems.append(f"{where} must be {_expected(tp)}, got {json_type(value)}")
        return None
    base, meta = _split(fitting)
    if base is Any:
        return freeze(value)
    if base is _NONE:
        return None
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            problems.append(f"{where} must be {_expected(base)}, got {show(value)}")
        return value
    if base in (int, float):
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float range
            finite = False
        if (not finite and base is float) or (meta.ge is not None and value < meta.ge) or \
                (meta.gt is not None and value <= meta.gt) or (meta.le is not None and value > meta.le):
            problems.append(f"{where} must be {_expected(fitting)}, got {show(value)}")
        return value
    if base is str:
        if meta.pattern is not None and not re.fullmatch(meta.pattern, value):
            problems.append(f"{where} must be {meta.what or 'a string matching ' + meta.pattern}, got {show(value)}")
        elif meta.min_length and len(value) < meta.min_length:
            problems.append(f"{where} must be a non-empty string")
        elif meta.check is not None and (why := meta.check(value)):
            problems.append(f"{where} {show(value)} {why}")
        return value
    if base is bool:
        return value
    if origin is tuple:
        if (meta.length is not None and len(value) != meta.length) or len(value) < (meta.min_length or 0):
            problems.append(f"{where} must be {_expected(fitting)}, got {len(value)}")
            return None
        item = typing.get_args(base)[0]
        return tuple(_convert(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin in _MAPPINGS:
        item = typing.get_args(base)[1]
        return FrozenDict({k: _convert(item, v, f"{where}[{k!r}]", problems, key=k) for k, v in value.items()})
    return _record(base, value, where, problems, key)


def _record(cls, value: dict, where: str, problems: list[str], key: str | None):
    before = len(problems)
    kwargs = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("key"):  # filled from the mapping key the record sits under
            kwargs[f.name] = key
        elif f.name in value:
            kwargs[f.name] = _convert(hints[f.name], value[f.name], _child(where, f.name), problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{_child(where, f.name)} is missing")
    return cls(**kwargs) if len(problems) == before else None


def parse(cls, value: Any, where: str = "", problems: list[str] | None = None):
    """Parse a JSON value into record `cls`, appending each problem to `problems`.

    Returns:
        the record, or None when there were problems.
    """
    problems = [] if problems is None else problems
    before = len(problems)
    result = _convert(cls, value, where, problems)
    return result if len(problems) == before else None


def to_json(value: Any) -> Any:
    """The JSON value of a record (records as objects, without None optional fields and key fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if f.metadata.get("key") or (item is None and has_default):
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value
