"""Load a run configuration: YAML file(s) + ``key=value`` overrides -> typed dataclasses, with clear errors.

One path serves ``pckd train``, ``eval``, ``probe`` and ``config``: the layers (a programmatic base, the file and
the files it names under ``_base_``, the command line) are read as text, each value is read against the type its
key declares (:mod:`pckd.config.coerce`), the layers are merged with OmegaConf (which also resolves ``${...}``
interpolations) and every section checks its declared rules as it is built (:mod:`pckd.params`).

The method's own section (``kd.*``, ``pckd.*``, ...) is typed by the hyper-parameter dataclass that the method
registered; sections of other methods are refused, except that a method switched on the command line drops the
file's section of the method it replaces (with a note).
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pckd.config.coerce import coerce_section, plain_to_python, suggest
from pckd.config.schema import RunConfig
from pckd.config.yaml_source import parse_override_layer, read_file_layers
from pckd.errors import PckdWarning, UserError
from pckd.params import field_types


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "data.classes=10"]`` -> nested dict with values read as plain YAML would (no schema:
    ``off`` becomes False). Loading a config reads values against the schema instead; see :func:`load_config`."""
    return typing.cast(dict[str, Any], plain_to_python(parse_override_layer(overrides)))


def schema_for(method: str, sections: dict[str, type] | None = None) -> type:
    """The root dataclass for a method: RunConfig plus a field named after the method holding its params,
    plus any extra ``sections`` (e.g. ``{"probe": ProbeConfig}``)."""
    from pckd.methods.base import check_not_retired, method_registry

    registry = method_registry()
    check_not_retired(method)
    if method not in registry:
        raise UserError(f"unknown method '{method}' (key 'method'){suggest(method, registry)}; valid: "
                        f"{', '.join(sorted(registry))}")
    params = registry[method].params
    fields: list[tuple[str, type, Any]] = [(method, params, dataclasses.field(default_factory=params))]
    for name, cls in (sections or {}).items():
        fields.append((name, cls, dataclasses.field(default_factory=cls)))
    return dataclasses.make_dataclass("ResolvedConfig", fields, bases=(RunConfig,))


def _method_of(layers: list[dict[str, Any]]) -> str:
    method: Any = RunConfig.method
    for layer in layers:
        method = layer.get("method", method)
    if not isinstance(method, str) or not method:
        raise UserError(f"config key 'method' must be a method name, got {method!r}; run 'pckd methods' for the list")
    return str(method)


def _switch_method(file_layers: list[dict[str, Any]], method: str, registry_names: set[str]) -> list[dict[str, Any]]:
    """A method given on the command line replaces the file's: drop the file's other-method sections (noted)."""
    file_method = _method_of(file_layers) if any("method" in layer for layer in file_layers) else None
    if file_method is None or file_method == method:
        return file_layers
    dropped = sorted({k for layer in file_layers for k in layer if k in registry_names and k != method})
    if dropped:
        warnings.warn(f"method={method} replaces the config's method={file_method}: its section(s) "
                      f"{', '.join(repr(d) for d in dropped)} are dropped", PckdWarning, stacklevel=3)
    return [{k: v for k, v in layer.items() if k not in dropped} for layer in file_layers]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                base: dict[str, Any] | None = None, sections: dict[str, type] | None = None) -> Any:
    """The resolved, validated config of a run.

    path: a YAML file (optional); overrides: ``key=value`` strings (the command line); base: a nested dict
    under the file (e.g. the config stored in a checkpoint); sections: extra top-level sections of a command
    (``{"probe": ProbeConfig}``). Raises UserError (one line, naming the key and the fix) on any problem.
    """
    from pckd.methods.base import method_registry

    names = set(method_registry())
    base_layers = [base] if base else []
    file_layers = read_file_layers(Path(path)) if path is not None else []
    cli_layer = parse_override_layer(overrides or [])
    method = _method_of(base_layers + file_layers + [cli_layer])
    if "method" in cli_layer:
        file_layers = _switch_method(base_layers + file_layers, method, names)[len(base_layers):]
    schema = schema_for(method, sections)
    coerced = [coerce_section(layer, schema, "", names, method) for layer in base_layers + file_layers + [cli_layer]]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *coerced)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(_omegaconf_message(exc, schema)) from None
    _refuse_unused_teacher(cfg, cli_layer)
    return cfg


def uses_teacher(cfg: Any) -> bool:
    """Whether the configured method, with its settings, distils from a teacher."""
    from pckd.methods.base import method_registry

    return bool(method_registry()[cfg.method].cls.uses_teacher(method_params(cfg)))


def _refuse_unused_teacher(cfg: Any, cli_layer: dict[str, Any]) -> None:
    """``teacher.*`` given on the command line of a method that never uses a teacher would be silently ignored."""
    from pckd.methods.base import method_registry

    given = cli_layer.get("teacher")
    if not isinstance(given, dict) or not given or uses_teacher(cfg):
        return
    if method_registry()[cfg.method].cls.teacher_need_varies:
        return
    keys = ", ".join(f"teacher.{k}" for k in given)
    hint = f"set student.arch={given['arch']} to train that network" if "arch" in given else "drop them"
    raise UserError(f"method={cfg.method} trains student.arch={cfg.student.arch} without a teacher, so {keys} "
                    f"would be ignored; {hint}")


def applicable_yaml(cfg: Any) -> str:
    """The resolved config as YAML with only what applies to this run: no teacher section for a run without a
    teacher, no ImageFolder-only data keys for other datasets (what ``pckd config`` shows)."""
    tree = to_dict(cfg)
    if not uses_teacher(cfg):
        tree.pop("teacher", None)
        for key in ("eval_teacher", "teacher_fold_bn", "teacher_channels_last"):
            tree["train"].pop(key, None)
    if str(cfg.data.name) != "imagefolder":
        for key in ("image_size", "transforms", "num_workers", "skip_corrupt"):
            tree["data"].pop(key, None)
    return str(OmegaConf.to_yaml(OmegaConf.create(tree)))


def _expected_type(schema: type, dotted: str) -> str | None:
    """The declared type of config key ``dotted`` in ``schema``, readable, or None when not a plain field."""
    cls: Any = schema
    tp: Any = None
    for part in dotted.split("."):
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            return None
        tp = field_types(cls).get(part)
        if tp is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        cls = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
    if dataclasses.is_dataclass(cls):
        return None
    return getattr(cls, "__name__", None) or str(cls).replace("typing.", "")


def _omegaconf_message(exc: OmegaConfBaseException, schema: type) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = " ".join(str(exc).split("\n")[0].split()).rstrip(".")
    expected = _expected_type(schema, key) if key != "?" else None
    if expected is not None:
        return f"config key '{key}': {msg}; give a value of type {expected}"
    return f"config key '{key}': {msg}"


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (saved into every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as nested plain dicts (choices as their text)."""
    return typing.cast(dict[str, Any], OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True))


def method_params(cfg: Any) -> Any:
    """The hyper-parameter dataclass of the configured method (``cfg.<method>``)."""
    return getattr(cfg, cfg.method)
