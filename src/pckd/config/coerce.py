"""Read raw config values against the schema: each key's declared type decides what its text means.

A ``str`` or choice key keeps the text as written (``off``, ``yes``, ``1e-3``, ``010``, even ``null`` when the key
cannot be null); a ``bool`` key reads YAML's words (true/false, yes/no, on/off) and 1/0; an ``int`` key reads
decimal digits (``010`` is 10); a ``float`` key reads any float literal (``1e-3``, ``.5``). Unknown keys get the
closest valid one. Python values (already typed) pass through when they fit the type.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from pckd.config.yaml_source import Plain
from pckd.errors import UserError
from pckd.params import Choice, field_types

NULL_WORDS = frozenset({"null", "Null", "NULL", "~", ""})
TRUE_WORDS = frozenset({"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "1"})
FALSE_WORDS = frozenset({"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "0"})
_INT = re.compile(r"[-+]?[0-9][0-9_]*")
_YAML_FLOATS = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".Inf": "inf", "-.Inf": "-inf", ".INF": "inf",
                "-.INF": "-inf", ".nan": "nan", ".NaN": "nan", ".NAN": "nan"}


def suggest(name: str, options: Iterable[str]) -> str:
    """``": did you mean 'x'?"`` for the closest option, or ``""``."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f": did you mean '{close[0]}'?" if close else ""


def _shown(value: Any) -> str:
    text = repr(str(value)) if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return str(getattr(tp, "__name__", tp))


def _bad(key: str, value: Any, tp: Any, example: str = "") -> UserError:
    hint = f", e.g. {key}={example}" if example else ""
    return UserError(f"config key '{key}'={_shown(value)} must be of type {_type_name(tp)}{hint}")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` (raw text or a Python value) as the type ``tp`` declared for ``key``."""
    if _is_interpolation(value):
        return str(value)  # OmegaConf resolves ${...} and checks the result
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X] and X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, Plain) and value in NULL_WORDS):
            return None
        if len(args) != 1:
            raise TypeError(f"unsupported schema type {tp} at {key}")
        return coerce_value(value, args[0], key)
    if value is None:
        raise UserError(f"config key '{key}' cannot be null; give a value of type {_type_name(tp)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            first = dataclasses.fields(tp)[0].name
            raise UserError(f"config key '{key}' is a section; set its fields instead, e.g. {key}.{first}=...")
        return coerce_section(value, tp, f"{key}.")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, tp, "[150,180,210]" if item_tp is int else "[...]")
        return [coerce_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and issubclass(tp, Choice):
        if isinstance(value, (dict, list, bool)) or not isinstance(value, str):
            raise UserError(f"config key '{key}'={_shown(value)} is not one of {', '.join(m.value for m in tp)}")
        return tp.parse(str(value), key)
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(key, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in TRUE_WORDS:
            return True
        if isinstance(value, str) and value in FALSE_WORDS:
            return False
        raise _bad(key, value, tp, "true")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            return int(value.strip().replace("_", ""), 10)
        raise _bad(key, value, tp, "10")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            text = _YAML_FLOATS.get(value.strip(), value.strip())
            try:
                return float(text.replace("_", ""))
            except ValueError:
                pass
        raise _bad(key, value, tp, "0.1")
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {tp} at {key}")


def coerce_section(data: dict[str, Any], cls: type, prefix: str = "",
                   foreign_sections: Iterable[str] = (), method: str = "") -> dict[str, Any]:
    """The mapping ``data`` read against the dataclass ``cls``: unknown keys refused with the closest valid key
    (a top-level key in ``foreign_sections`` is named as another method's section), every value coerced."""
    types = field_types(cls)
    out: dict[str, Any] = {}
    foreign = set(foreign_sections)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            if not prefix and key in foreign:
                raise UserError(f"config section '{key}' belongs to method '{key}' but method={method}; remove the "
                                f"section or set method={key}")
            candidates = [f"{prefix}{k}" for k in types]
            hint = suggest(full, candidates)
            raise UserError(f"unknown config key '{full}'{hint or '; valid keys here: ' + ', '.join(candidates)}")
        out[key] = coerce_value(value, types[key], full)
    return out


def plain_to_python(value: Any) -> Any:
    """A raw tree read as ordinary YAML 1.1 would (for values outside any schema, e.g. a report)."""
    import yaml

    if isinstance(value, dict):
        return {str(k): plain_to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_to_python(v) for v in value]
    if isinstance(value, Plain):
        return yaml.safe_load(str(value)) if value else None
    return value
