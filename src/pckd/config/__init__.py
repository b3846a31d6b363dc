"""Run configuration: the typed schema, loading (YAML + ``_base_`` + ``key=value`` overrides) and the config a
checkpoint was trained with. :func:`load_config` is the one entry point of every command."""

from pckd.config.load import (
    load_config,
    method_params,
    parse_overrides,
    schema_for,
    to_dict,
    to_yaml,
)
from pckd.config.schema import DataConfig, ModelConfig, RunConfig, TrainConfig

__all__ = [
    "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config", "method_params", "parse_overrides",
    "schema_for", "to_dict", "to_yaml",
]
