"""Load a run configuration: YAML file(s) + ``key=value`` overrides -> typed dataclasses, with clear errors.

A config file may name other files to start from with ``_base_: other.yaml`` (or a list), resolved relative to
the file. The method's own section (``kd.*``, ``pckd.*``, ...) is typed by the hyper-parameter dataclass that
the method registered; sections of other methods are rejected.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pckd.config_schema import RunConfig
from pckd.errors import UserError

_BASE_KEY = "_base_"


# ---- reading ---------------------------------------------------------------------------------------------
def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file, merging the files it names under ``_base_`` first."""
    path = path.expanduser()
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass the path of a YAML file, e.g. configs/demo/kd.yaml")
    if path.resolve() in seen:
        raise UserError(f"config file '{path}' includes itself through _base_; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file '{path}'{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    bases = data.pop(_BASE_KEY, None)
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else (bases or []):
        merged = _deep_merge(merged, _read_yaml(path.parent / base, seen + (path.resolve(),)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "pckd.preview.mode=off"]`` -> nested dict; values parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override '{item}' is not of the form key=value; write e.g. train.epochs=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{part}' is a value, not a section")
        node[parts[-1]] = value
    return nested


# ---- schema ----------------------------------------------------------------------------------------------
def schema_for(method: str) -> type:
    """The root dataclass for a method: RunConfig plus a field named after the method holding its params."""
    from pckd.methods.base import method_registry

    registry = method_registry()
    if method not in registry:
        raise UserError(f"unknown method '{method}' (key 'method'){_suggest(method, registry)}; valid: {', '.join(sorted(registry))}")
    params = registry[method].params
    return dataclasses.make_dataclass(
        "ResolvedConfig", [(method, params, dataclasses.field(default_factory=params))], bases=(RunConfig,)
    )


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f": did you mean '{close[0]}'?" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return args[0]
    return tp


def _check_keys(data: dict[str, Any], cls: type, prefix: str, method: str, all_methods: typing.Iterable[str]) -> None:
    """Reject unknown keys with the closest valid one, before any type conversion."""
    types = _field_types(cls)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            if not prefix and key in all_methods:
                raise UserError(
                    f"config section '{key}' belongs to method '{key}' but method={method}; remove the section or set method={key}"
                )
            candidates = [f"{prefix}{k}" for k in types]
            hint = _suggest(full, candidates)
            raise UserError(f"unknown config key '{full}'{hint or '; valid keys here: ' + ', '.join(candidates)}")
        sub = _unwrap_optional(types[key])
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise UserError(f"config key '{full}' is a section; set its fields instead, e.g. {full}.{dataclasses.fields(sub)[0].name}=...")
            _check_keys(value, sub, f"{full}.", method, all_methods)


def resolve_config(path: str | Path | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> Any:
    """Load ``path`` (optional) over ``base`` (optional nested dict), apply ``overrides``, type-check and
    return the resolved dataclass instance.

    Raises UserError (one line, naming the key and the fix) on any problem.
    """
    from pckd.methods.base import method_registry

    data = _deep_merge(base or {}, _read_yaml(Path(path)) if path is not None else {})
    data = _deep_merge(data, parse_overrides(overrides or []))
    method = data.get("method", RunConfig.method)
    if not isinstance(method, str):
        raise UserError(f"config key 'method' must be a method name, got {method!r}; run 'pckd methods' for the list")
    schema = schema_for(method)
    _check_keys(data, schema, "", method, method_registry().keys())
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data))
        obj = OmegaConf.to_object(cfg)
    except UserError:
        raise
    except OmegaConfBaseException as exc:
        raise UserError(_type_error_message(exc, schema)) from None
    validate(obj)
    return obj


def _expected_type(schema: type, dotted: str) -> str | None:
    """The declared type of config key ``dotted`` in ``schema``, readable (``int``, ``list[int]``, ``int or
    null``), or None when the key is not a plain field."""
    cls: Any = schema
    tp: Any = None
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        tp = _field_types(cls).get(part)
        if tp is None:
            return None
        cls = _unwrap_optional(tp)
    if dataclasses.is_dataclass(cls):
        return None
    name = getattr(cls, "__name__", None) if typing.get_origin(cls) is None else None
    name = name or str(cls).replace("typing.", "")
    return f"{name} or null" if cls is not tp else name


def _type_error_message(exc: OmegaConfBaseException, schema: type | None = None) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0].rstrip(".")
    expected = _expected_type(schema, key) if schema is not None and key != "?" else None
    if expected is not None:
        return f"config key '{key}': {msg}; give a value of type {expected}"
    return f"config key '{key}': {msg}"


_CHOICES = {
    "train.schedule": ("multistep", "cosine"),
    "train.precision": ("fp32", "bf16"),
    "train.on_nonfinite": ("stop", "skip_step"),
    "data.name": ("cifar100", "cifar10", "imagefolder", "digits"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Any) -> None:
    """Semantic checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise UserError(f"config key '{key}'='{value}' is not one of {', '.join(choices)}")
    positive = ["train.epochs", "train.batch_size", "train.eval_batch_size", "train.log_interval", "train.checkpoint_every"]
    for key in positive:
        if _get(cfg, key) <= 0:
            raise UserError(f"config key '{key}'={_get(cfg, key)} must be positive")
    if cfg.train.lr <= 0:
        raise UserError(f"config key 'train.lr'={cfg.train.lr} must be positive, e.g. train.lr=0.05")
    for key in ("data.classes", "data.train_limit", "data.test_limit", "data.num_classes"):
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise UserError(f"config key '{key}'={value} must be positive (or null for all)")
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        raise UserError(f"config key 'train.device'='{device}' is not one of auto, cpu, cuda, cuda:N, mps")
    if cfg.resume and cfg.overwrite:
        raise UserError("config keys 'resume' and 'overwrite' are both true; choose one")


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (saved into every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def method_params(cfg: Any) -> Any:
    """The hyper-parameter dataclass of the configured method (``cfg.<method>``)."""
    return getattr(cfg, cfg.method)
