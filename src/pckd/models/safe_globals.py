"""The few non-tensor objects that published KD checkpoints pickle, allowed in ``torch.load(weights_only=True)``.

RepDistiller's ``<arch>_last.pth`` stores its ``argparse.Namespace`` under ``opt``; its and mdistiller's files
store accuracies as numpy scalars. Neither runs code when unpickled: a Namespace is rebuilt by filling its
``__dict__`` (it defines no ``__setstate__``), and a numpy scalar from a numeric dtype and raw bytes. Everything
else (any other class or function, numpy arrays, object/void dtypes) stays refused, so a malicious pickle is
still stopped before it runs. torch's own allow-list mechanism is used; only the list is ours.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

_NUMERIC_DTYPES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16",
                   "Float32", "Float64", "LongDouble", "Long", "ULong", "LongLong", "ULongLong", "Byte", "UByte",
                   "Short", "UShort", "Int", "UInt", "Complex64", "Complex128")


def published_format_globals() -> list[Any]:
    """argparse.Namespace, numpy's scalar constructor, ``numpy.dtype`` and its numeric dtype classes."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    allowed: list[Any] = [argparse.Namespace, core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by their classes
    if dtypes is not None:
        allowed += [getattr(dtypes, f"{name}DType") for name in _NUMERIC_DTYPES if hasattr(dtypes, f"{name}DType")]
    return allowed


@contextlib.contextmanager
def published_formats() -> Iterator[None]:
    """Within this block, ``weights_only`` loads also accept the objects of :func:`published_format_globals`."""
    allow = getattr(torch.serialization, "safe_globals", None)
    if allow is None:  # torch < 2.5: no scoped allow-list; such files then need the trust flag
        yield
        return
    with allow(published_format_globals()):
        yield
