"""CIFAR-10/100 from the standard python pickles, as uint8 tensors.

Files whose md5 differs from the canonical release (e.g. a re-split copy) are used anyway, with one warning per
process: accuracies on them are not comparable with published numbers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pckd.data.safe_pickle import RefusedGlobal, load_data_pickle, refused_message
from pckd.data.subset import check_labels
from pckd.errors import UserError


@dataclass(frozen=True)
class _Layout:
    title: str  # for messages
    folder: str  # the folder the official archive extracts to
    train: tuple[tuple[str, str], ...]  # (file, canonical md5)
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    label_key: str
    names_key: str


# Canonical md5 sums are those of the official archives (the same values torchvision checks).
_LAYOUTS = {
    "cifar100": _Layout(
        title="CIFAR-100",
        folder="cifar-100-python",
        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta=("meta", "7973b15100ade9c7d40fb424638fde48"),
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
    "cifar10": _Layout(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        label_key="labels",
        names_key="label_names",
    ),
}

_warned_noncanonical: set[str] = set()  # dataset names already warned about in this process
_md5_cache: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> md5


def _md5(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _md5_cache:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _md5_cache[key] = digest.hexdigest()
    return _md5_cache[key]


def _find_folder(layout: _Layout, root: Path) -> Path | None:
    """``root/<official folder>`` or ``root`` itself, whichever holds the first training file."""
    first = layout.train[0][0]
    for candidate in (root / layout.folder, root):
        if (candidate / first).is_file():
            return candidate
    return None


def _download(name: str, layout: _Layout, root: Path) -> None:
    from torchvision import datasets

    # torchvision unpickles only the files it has just md5-checked against the official archive.
    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # network and archive errors alike end the same way for the user
        reason = " ".join(str(exc).split())
        raise UserError(
            f"data.download: could not fetch {layout.title} into '{root}' ({type(exc).__name__}: {reason}); "
            f"check the internet connection or copy {layout.folder}/ there yourself and set data.download=false"
        ) from exc


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle, read with the restricted unpickler (a planted file cannot run code)."""
    try:
        with open(path, "rb") as f:
            return load_data_pickle(f, encoding="latin1")
    except RefusedGlobal as exc:
        raise UserError(refused_message(path, exc)) from exc
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(
            f"data.root: cannot read CIFAR file '{path}' ({type(exc).__name__}); "
            "replace it with the original file or point data.root at an intact copy"
        ) from exc


def _check_canonical(name: str, layout: _Layout, folder: Path, files: list[tuple[str, str]]) -> None:
    if name in _warned_noncanonical:
        return  # skip hashing too: the answer no longer matters
    for file, canonical in files:
        if _md5(folder / file) != canonical:
            _warned_noncanonical.add(name)
            warnings.warn(
                f"{layout.title} files under '{folder}' are not the canonical {layout.title} split "
                f"(md5 of '{file}' differs); using them anyway, but accuracies are not comparable "
                "with published numbers",
                stacklevel=3,
            )
            return


def _not_cifar(layout: _Layout, path: Path, what: str) -> UserError:
    return UserError(f"data.root: '{path}' is not a {layout.title} pickle ({what}); point data.root at the python "
                     "version of the dataset")


def _class_names(layout: _Layout, path: Path) -> list[str]:
    meta = _unpickle(path)
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise _not_cifar(layout, path, f"no list of class names under '{layout.names_key}'")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _split_arrays(layout: _Layout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 pixel rows [N, 3072] and int64 labels [N] of one split file. Any other pixel type is refused,
    not cast: float images in [0, 1] would turn black and int64 values above 255 would wrap around."""
    entry = _unpickle(path)
    if not isinstance(entry, dict) or "data" not in entry or layout.label_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise _not_cifar(layout, path, f"needs the keys 'data' and '{layout.label_key}', found {keys}")
    data = entry["data"]
    if not isinstance(data, np.ndarray):
        raise _not_cifar(layout, path, f"'data' is a {type(data).__name__}, not an array")
    if data.dtype != np.uint8:
        raise UserError(
            f"data.root: '{path}' stores its images as {data.dtype}; {layout.title} pickles hold uint8 pixels "
            "(0-255) and converting would corrupt them; write the file with uint8 data or use the original files")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _not_cifar(layout, path, f"data shape {data.shape}, expected (N, 3072)")
    raw = entry[layout.label_key]
    labels = np.asarray(raw) if isinstance(raw, (list, tuple, np.ndarray)) else np.asarray([None])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != data.shape[0]:
        raise _not_cifar(layout, path, f"'{layout.label_key}' must be {data.shape[0]} integers, one per image")
    return data, labels.astype(np.int64)


def load_cifar(
    name: str, root: str | os.PathLike, train: bool, download: bool = False
) -> tuple[Tensor, Tensor, list[str]]:
    """Load one split of CIFAR-10 or CIFAR-100.

    Args:
        name: ``"cifar100"`` or ``"cifar10"``.
        root: the folder holding ``cifar-100-python/`` (``cifar-10-batches-py/``), or that folder itself.
        train: the training split, else the test split.
        download: fetch the official archive through torchvision when the files are missing.

    Returns:
        images uint8 [N,3,32,32], labels int64 [N], class names.
    """
    if name not in _LAYOUTS:
        raise UserError(f"data.name: '{name}' is not a CIFAR dataset; use one of {sorted(_LAYOUTS)}")
    layout = _LAYOUTS[name]
    root_path = Path(root).expanduser()
    folder = _find_folder(layout, root_path)
    if folder is None and download:
        _download(name, layout, root_path)
        folder = _find_folder(layout, root_path)
    if folder is None:
        expected = root_path / layout.folder / layout.train[0][0]
        raise UserError(
            f"data.root: no {layout.title} files under '{root_path}' (expected {expected}); "
            "set data.root=... or data.download=true to fetch them (needs internet)"
        )

    files = list(layout.train if train else layout.test)
    for file, _ in [*files, layout.meta]:
        if not (folder / file).is_file():
            raise UserError(
                f"data.root: '{folder / file}' is missing; restore the complete {layout.folder}/ folder "
                "or set data.download=true on an empty data.root"
            )
    _check_canonical(name, layout, folder, [*files, layout.meta])

    class_names = _class_names(layout, folder / layout.meta[0])
    chunks, labels = [], []
    for file, _ in files:
        data, split_labels = _split_arrays(layout, folder / file)
        chunks.append(data)
        labels.append(split_labels)
    # Rows are stored channel-major (R plane, G plane, B plane), so a reshape gives CHW without a copy.
    images = torch.from_numpy(np.concatenate(chunks) if len(chunks) > 1 else chunks[0]).view(-1, 3, 32, 32)
    label_tensor = torch.from_numpy(np.concatenate(labels))
    check_labels(label_tensor, len(class_names), source=str(folder / files[0][0]))
    return images, label_tensor, class_names
