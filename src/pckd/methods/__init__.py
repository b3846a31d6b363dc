"""Distillation methods. Importing this package registers every built-in method."""

from pckd.methods import (  # noqa: F401  (registration)
    ab,
    at,
    cc,
    ce,
    ckd,
    crd,
    ctkd,
    dist,
    dkd,
    fitnet,
    fsp,
    ft,
    ickd,
    intra_class,
    kd,
    ls,
    mld,
    nkd,
    nst,
    pckd,
    pkt,
    reviewkd,
    rkd,
    sp,
    sskd,
    vid,
    wttm,
)
from pckd.methods.base import (
    Distiller,
    MethodSpec,
    StepOutput,
    method_registry,
    register_method,
)

__all__ = ["Distiller", "MethodSpec", "StepOutput", "method_registry", "register_method"]
