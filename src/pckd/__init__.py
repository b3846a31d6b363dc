"""pckd: knowledge distillation of image classifiers (PCKD, sample-wise CKD, intra-class teachers, baselines).

The library surface (docs/api.md): :func:`build_distiller`, :func:`batch_from_tensors`, :func:`batch_from_uint8`,
:func:`as_feature_model`, :func:`create_model`, :func:`load_config`, and the losses in :mod:`pckd.losses`. They
are imported on first use, so ``import pckd`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "build_distiller": "pckd.api", "batch_from_tensors": "pckd.api", "batch_from_uint8": "pckd.api",
    "method_settings": "pckd.api", "as_feature_model": "pckd.models", "create_model": "pckd.models",
    "load_config": "pckd.config", "Batch": "pckd.data.batch", "DataInfo": "pckd.data.info",
    "Distiller": "pckd.methods.base", "StepOutput": "pckd.methods.base", "losses": "pckd.losses",
}
__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'pckd' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_API[name])
    return module if name == "losses" else getattr(module, name)
