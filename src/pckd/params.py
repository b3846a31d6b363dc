"""Declarative settings: choice enums, fields with their rules, and the one validator that reads them.

Every config section (``train.*``, ``data.*``, a method's ``kd.*``, ...) is a dataclass deriving from
:class:`Settings`. A field states its rule where it is declared::

    temperature: float = hp(4.0, gt=0, doc="softmax temperature T")
    mode: WeightingMode = hp(WeightingMode.preview, doc="sample weighting")

and ``Settings.__post_init__`` checks every rule when the section is built (from a config file or in code),
raising one :class:`~pckd.errors.UserError` line that names the full key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from typing import Any, ClassVar

from pckd.errors import UserError


class Choice(str, enum.Enum):
    """Base of every choice key: members are named by their value, so ``Schedule.cosine == "cosine"`` and
    ``str``/f-strings give the bare value. A member may be given another name as an alias (``off = "none"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def names(cls) -> list[str]:
        """Every accepted spelling, canonical names first, then aliases."""
        canonical = [m.value for m in cls]
        return canonical + [n for n in cls.__members__ if n not in canonical]

    @classmethod
    def parse(cls, value: Any, key: str) -> Choice:
        """The member named ``value`` (a member, a name or an alias); UserError naming ``key`` otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls.__members__:
            return cls.__members__[value]
        choices = ", ".join(m.value for m in cls)
        aliases = [f"{n} = {cls.__members__[n].value}" for n in cls.names() if n not in {m.value for m in cls}]
        if aliases:
            choices += f" ({', '.join(aliases)})"
        close = difflib.get_close_matches(str(value), cls.names(), n=1, cutoff=0.6) if isinstance(value, str) else []
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"config key '{key}'={value!r} is not one of {choices}{hint}")


def hp(default: Any = dataclasses.MISSING, *, factory: Any = None, doc: str = "", gt: float | None = None,
       ge: float | None = None, lt: float | None = None, le: float | None = None, finite: bool = True) -> Any:
    """A settings field with its rules: bounds (``gt``/``ge``/``lt``/``le``, applied to a number or to every
    element of a list of numbers), finiteness of floats (``finite``, default on) and a one-line ``doc`` shown by
    ``pckd methods``. ``factory`` builds a mutable default (a list, a nested section)."""
    metadata = {"doc": doc, "gt": gt, "ge": ge, "lt": lt, "le": le, "finite": finite}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _describe(value: Any) -> str:
    return repr(value.value) if isinstance(value, Choice) else repr(value)


def _check_number(key: str, value: Any, rules: dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and rules.get("finite", True) and not math.isfinite(value):
        raise UserError(f"config key '{key}'={value!r} must be a finite number")
    gt, ge, lt, le = rules.get("gt"), rules.get("ge"), rules.get("lt"), rules.get("le")
    if gt is not None and not value > gt:
        raise UserError(f"config key '{key}'={value!r} must be {'positive' if gt == 0 else f'> {gt:g}'}")
    if ge is not None and not value >= ge:
        raise UserError(f"config key '{key}'={value!r} must be >= {ge:g}")
    if lt is not None and not value < lt:
        raise UserError(f"config key '{key}'={value!r} must be < {lt:g}")
    if le is not None and not value <= le:
        raise UserError(f"config key '{key}'={value!r} must be <= {le:g}")


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _check_type(key: str, value: Any, tp: Any) -> None:
    """Plain scalar fields must hold their declared type (a settings object built in code gets no coercion)."""
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise UserError(f"config key '{key}'={value!r} must be {_TYPE_WORDS[tp]}")


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class Settings:
    """Base of every config section. ``section`` is its dotted key prefix (``train``, ``pckd.preview``); the
    method registry sets it for hyper-parameter classes. Subclasses may add cross-field checks in
    :meth:`check`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        validate_settings(self, type(self).section)

    def check(self, prefix: str) -> None:
        """Rules that involve several fields (raise UserError naming the keys). Default: none."""

    def key(self, name: str) -> str:
        """The full config key of field ``name``."""
        return f"{type(self).section}.{name}" if type(self).section else name


def validate_settings(obj: Any, prefix: str) -> None:
    """Check every field of the dataclass ``obj`` against its declared rules (choices are converted to their
    enum member in place), then run ``obj.check``. Keys in messages are ``prefix.field``."""
    types = field_types(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        tp = _unwrap_optional(types[f.name])
        if value is None:
            continue
        if isinstance(tp, type) and issubclass(tp, Choice):
            object.__setattr__(obj, f.name, tp.parse(value, key))
            continue
        if isinstance(value, list):
            item_tp = (typing.get_args(tp) or (Any,))[0]
            for i, item in enumerate(value):
                _check_type(f"{key}[{i}]", item, item_tp)
                _check_number(f"{key}[{i}]", item, dict(f.metadata))
        else:
            _check_type(key, value, tp)
            if tp is float and isinstance(value, int):
                object.__setattr__(obj, f.name, float(value))
            _check_number(key, value, dict(f.metadata))
    if isinstance(obj, Settings):
        obj.check(prefix)


def set_section(cls: type, section: str) -> None:
    """Give ``cls`` (a Settings dataclass) and its nested Settings sections their dotted key prefixes."""
    if not (isinstance(cls, type) and issubclass(cls, Settings)):
        return
    cls.section = section
    for name, tp in field_types(cls).items():
        sub = _unwrap_optional(tp)
        if dataclasses.is_dataclass(sub) and isinstance(sub, type):
            set_section(sub, f"{section}.{name}")


def describe_field(cls: type, name: str) -> tuple[str, str]:
    """(allowed values, doc) of a settings field, for listings such as ``pckd methods``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp = _unwrap_optional(field_types(cls)[name])
    allowed = ""
    if isinstance(tp, type) and issubclass(tp, Choice):
        allowed = " | ".join(m.value for m in tp)
    else:
        rules = [f"{op} {f.metadata[k]:g}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                 if f.metadata.get(k) is not None]
        allowed = ", ".join(rules)
    return allowed, str(f.metadata.get("doc", ""))


def settings_rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    """(full key, default, allowed values or rule, doc) of every leaf field of the settings dataclass ``cls``,
    nested sections flattened to dotted keys: what ``pckd methods`` prints."""
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(field_types(cls)[f.name])
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            rows += settings_rows(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        allowed, doc = describe_field(cls, f.name)
        rows.append((key, shown, allowed, doc))
    return rows
