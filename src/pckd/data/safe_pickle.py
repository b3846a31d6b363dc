"""A restricted unpickler for data files (the CIFAR pickles): plain containers and numpy arrays only.

``pickle.load`` runs whatever callable a file names, so a planted data file could execute code. This unpickler
resolves only the few globals numpy needs to rebuild an array (pickled with protocol 2 to 5, by numpy 1 or 2)
and refuses every other one before calling anything.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

_ARRAY = np.zeros(1, dtype=np.uint8)
# The functions numpy itself pickles arrays with, taken from numpy's own reducers so no numpy-version-specific
# module path (numpy.core vs numpy._core) has to be imported.
_RECONSTRUCT = _ARRAY.__reduce__()[0]
_FROMBUFFER = _ARRAY.__reduce_ex__(5)[0]


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a CIFAR pickle may name."""
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("_codecs").encode,  # protocol 2 pickles bytes as encode(str, 'latin1')
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _RECONSTRUCT
        table[(f"{core}.numeric", "_frombuffer")] = _FROMBUFFER
    return table


_ALLOWED = _allowed()


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (``name`` is ``module.qualname``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refused global '{name}'")
        self.name = name


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def load_data_pickle(f: IO[bytes], encoding: str = "latin1") -> Any:
    """Unpickle ``f`` allowing only containers, str/bytes/numbers and numpy arrays.

    Raises:
        RefusedGlobal: the file names any other global (nothing in it has been called).
        pickle.UnpicklingError, EOFError, ValueError: the file is not a readable pickle.
    """
    return _DataUnpickler(f, encoding=encoding).load()


def refused_message(path: object, exc: RefusedGlobal) -> str:
    """The one-line error for a data pickle that names a refused global."""
    return (f"data.root: '{path}' is not a plain data pickle: it names {exc.name}, which could run code, so it "
            "was refused unread; replace it with the original dataset file (data files are never trusted)")

