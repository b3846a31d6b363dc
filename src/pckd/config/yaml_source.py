"""Reading config text: YAML files (with ``_base_``) and ``key=value`` overrides, keeping every value's text.

YAML 1.1 (PyYAML) turns ``off``/``yes``/``on`` into booleans and ``010`` into 8, so a text key such as
``pckd.preview.mode: off`` would arrive as ``False``. Here every unquoted scalar stays text (a :class:`Plain`
string) and quoted scalars stay ordinary strings; :mod:`pckd.config.coerce` then reads each value against the
type the schema declares for its key. Aliases are refused (a "billion laughs" file would otherwise expand
without bound), and files and nesting are capped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pckd.errors import UserError

BASE_KEY = "_base_"
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32


class Plain(str):
    """The text of an unquoted YAML scalar (its meaning depends on the key's declared type)."""


class _TextLoader(yaml.SafeLoader):
    """SafeLoader without implicit typing: plain scalars become :class:`Plain`, quoted ones ``str``."""

    yaml_implicit_resolvers: dict = {}  # noqa: RUF012 (PyYAML reads it per class: empty = no implicit typing)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not supported in configs; write the values out",
                event.start_mark)
        depth = getattr(self, "_depth", 0)
        if depth > MAX_DEPTH:
            raise yaml.constructor.ConstructorError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth


def _construct_text(loader: _TextLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return Plain(value) if node.style is None else str(value)


_TextLoader.add_constructor("tag:yaml.org,2002:str", _construct_text)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_text(text: str, where: str) -> Any:
    """YAML ``text`` with every plain scalar kept as :class:`Plain` text; UserError (one line) naming ``where``."""
    try:
        return yaml.load(text, Loader=_TextLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise UserError(f"{where}{line} is not valid YAML ({_one_line(str(problem))}); fix the syntax") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply; flatten it") from None


def read_file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The mappings of ``path`` and the files it names under ``_base_`` (bases first), as raw text trees."""
    path = path.expanduser()
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass the path of a YAML file, e.g. "
                        "configs/cifar100/kd/resnet32x4-resnet8x4.yaml")
    if path.resolve() in seen:
        raise UserError(f"config file '{path}' includes itself through _base_; remove the cycle")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UserError(f"config file '{path}' is {size} bytes; a config is at most {MAX_FILE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"config file '{path}' cannot be read ({exc.strerror}); check the path") from None
    data = parse_text(text, f"config file '{path}'")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        base_list: list[Any] = []
    elif isinstance(bases, str):
        base_list = [bases]
    elif isinstance(bases, list) and all(isinstance(b, str) for b in bases):
        base_list = bases
    else:
        raise UserError(f"config file '{path}': {BASE_KEY} must be a file name or a list of file names, "
                        f"got {_one_line(repr(bases))}")
    layers: list[dict[str, Any]] = []
    for base in base_list:
        layers.extend(read_file_layers(path.parent / base, seen + (path.resolve(),)))
    layers.append(data)
    return layers


def parse_override_layer(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "pckd.preview.mode=off"]`` -> nested mapping of raw text values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override '{item}' is not of the form key=value; write e.g. train.epochs=10")
        value: Any = parse_text(raw, f"override '{item}'") if raw.strip() else Plain("")
        if value is None:  # YAML reads an all-comment value as nothing
            value = Plain("")
        node = nested
        parts = key.split(".")
        if any(not part for part in parts):
            raise UserError(f"override '{item}' has an empty key part; write e.g. train.epochs=10")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{part}' is a value, not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, section by section (a new dict; the inputs are not changed)."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
