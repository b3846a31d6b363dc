"""Models: the CIFAR zoo, torchvision/timm models through a hook adapter, and checkpoint loading."""

from pckd.models.adapter import as_feature_model
from pckd.models.checkpoint import (
    extract_state_dict,
    load_weights,
    read_checkpoint,
    safetensors_metadata,
)
from pckd.models.export import export_safetensors
from pckd.models.interface import FeatureModel, FeatureOutput
from pckd.models.registry import create_model, list_models, model_summary

__all__ = [
    "FeatureModel",
    "FeatureOutput",
    "as_feature_model",
    "create_model",
    "export_safetensors",
    "extract_state_dict",
    "list_models",
    "load_weights",
    "model_summary",
    "read_checkpoint",
    "safetensors_metadata",
]
