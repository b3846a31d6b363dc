"""Distillation methods. Importing this package registers every built-in method."""

from pckd.methods import ce, ckd, intra_class, kd, pckd  # noqa: F401  (registration)
from pckd.methods.base import Distiller, MethodSpec, StepOutput, method_registry, register_method

__all__ = ["Distiller", "MethodSpec", "StepOutput", "method_registry", "register_method"]
