"""TinyImageNet from the standard ``tiny-imagenet-200/`` folder of the official zip, as uint8 tensors, with no
reorganisation of the files:

    wnids.txt                               the 200 class ids (WordNet ids), one a line
    words.txt                               optional: "<wnid>\\t<names>" (the first name becomes the class name)
    train/<wnid>/images/*.JPEG              500 training images per class (the *_boxes.txt files are not read)
    val/images/*.JPEG                       the 10,000 validation images, the test split here
    val/val_annotations.txt                 "<file>\\t<wnid>\\t<x>\\t<y>\\t<w>\\t<h>" per validation image

Labels are the positions of the wnids in sorted order (what an ImageFolder of the reorganised folders gives).
Every image is 64x64 RGB (the few greyscale files are expanded to three channels). The unlabelled ``test/``
split is not read. Decoding all 110,000 JPEGs takes a minute or two on one core; the result stays in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pckd.errors import UserError

FOLDER = "tiny-imagenet-200"
SIDE = 64
SUFFIXES = (".jpeg", ".jpg", ".png")


def _find_folder(root: Path) -> Path | None:
    """``root/tiny-imagenet-200`` or ``root`` itself, whichever holds ``wnids.txt``."""
    for candidate in (root / FOLDER, root):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


def _wnids(folder: Path) -> list[str]:
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text(errors="replace").splitlines()
                    if line.strip()})
    if not wnids:
        raise UserError(f"data.root: '{folder / 'wnids.txt'}' lists no classes; restore the original file")
    return wnids


def _class_names(folder: Path, wnids: list[str]) -> list[str]:
    words: dict[str, str] = {}
    path = folder / "words.txt"
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    return [words.get(w) or w for w in wnids]


def _decode(path: Path) -> Tensor:
    """One image as uint8 [3,64,64]; UserError naming the file when it is unreadable or of another size."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"data.root: cannot decode TinyImageNet image '{path}' ({type(exc).__name__}); "
                        "replace it with the original file") from exc
    if pixels.shape != (SIDE, SIDE, 3):
        raise UserError(f"data.root: '{path}' is {pixels.shape[1]}x{pixels.shape[0]}, TinyImageNet images are "
                        f"{SIDE}x{SIDE}; replace it with the original file")
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def _images(files: list[Path]) -> Tensor:
    out = torch.empty((len(files), 3, SIDE, SIDE), dtype=torch.uint8)
    for i, path in enumerate(files):
        out[i] = _decode(path)
    return out


def _train_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise UserError(f"data.root: '{images}' is missing (class {wnid} of wnids.txt); restore the complete "
                            f"{FOLDER}/ folder")
        found = sorted(p for p in images.iterdir() if p.suffix.lower() in SUFFIXES)
        if not found:
            raise UserError(f"data.root: '{images}' holds no images; restore the complete {FOLDER}/ folder")
        files += found
        labels += [label] * len(found)
    return files, labels


def _val_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"data.root: '{annotations}' is missing; restore the complete {FOLDER}/ folder")
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise UserError(f"data.root: line {number} of '{annotations}' is not '<file>\\t<wnid>...' with a wnid "
                            "of wnids.txt; restore the original file")
        path = folder / "val" / "images" / fields[0].strip()
        if not path.is_file():
            raise UserError(f"data.root: '{path}' (line {number} of '{annotations}') is missing; restore the "
                            f"complete {FOLDER}/ folder")
        files.append(path)
        labels.append(index[fields[1].strip()])
    if not files:
        raise UserError(f"data.root: '{annotations}' lists no images; restore the original file")
    return files, labels


def load_tinyimagenet(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[Tensor, Tensor, list[str]]:
    """One split of TinyImageNet (train, or val as the test split): images uint8 [N,3,64,64], labels int64 [N],
    class names. ``root`` holds ``tiny-imagenet-200/`` (or is that folder). torchvision cannot download it, so
    ``download`` only changes the message."""
    root_path = Path(root).expanduser()
    folder = _find_folder(root_path)
    if folder is None:
        how = ("torchvision has no TinyImageNet download: fetch tiny-imagenet-200.zip (Stanford CS231n) and "
               "unzip it there" if download else "set data.root=... to the folder that holds it")
        raise UserError(f"data.root: no TinyImageNet files under '{root_path}' (expected {root_path / FOLDER}/"
                        f"wnids.txt); {how}")
    wnids = _wnids(folder)
    files, labels = (_train_files if train else _val_files)(folder, wnids)
    return _images(files), torch.tensor(labels, dtype=torch.long), _class_names(folder, wnids)
