"""Planted CIFAR pickles never run code: the restricted unpickler refuses every global but numpy's array
rebuilders, with one `pckd: error:` line and exit 2."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pckd.cli import main
from pckd.data.cifar import load_cifar
from pckd.data.safe_pickle import RefusedGlobal, load_data_pickle
from pckd.errors import UserError

BASE = "method: ce\nstudent: {arch: resnet8}\ndata: {name: digits}\ntrain: {epochs: 1, device: cpu, progress: false}\n"


class _Payload:
    """Unpickling this calls ``exec`` on code that creates ``marker``: what a planted data file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant(root: Path, marker: Path, protocol: int = 4) -> Path:
    """A cifar-100-python folder whose train file carries the payload; meta and test are plain."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    plain = {"data": np.zeros((4, 3072), dtype=np.uint8), "fine_labels": [0, 1, 2, 3]}
    (folder / "test").write_bytes(pickle.dumps(plain))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    (folder / "train").write_bytes(pickle.dumps({**plain, "x": _Payload(marker)}, protocol=protocol))
    return folder


@pytest.mark.filterwarnings("ignore:.*not the canonical")
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_planted_payload_is_refused_and_never_runs(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "data", marker, protocol)
    assert not marker.exists()
    with pytest.raises(UserError) as err:
        load_cifar("cifar100", tmp_path / "data", train=True)
    assert "exec" in str(err.value) and "cifar-100-python/train" in str(err.value)  # __builtin__.exec in protocol 2
    assert not marker.exists(), "the payload ran"


def test_planted_payload_through_pckd_train_is_one_line_exit_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "data", marker)
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    code = main(["train", str(config), f"output_dir={tmp_path / 'run'}", "data.name=cifar100",
                 f"data.root={tmp_path / 'data'}"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pckd: error:")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "builtins.exec" in errors[0] and "refused" in errors[0]
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_containers_still_load(protocol: int) -> None:
    data = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072)
    obj = {"data": data, "labels": [1, 2], "batch_label": "b", b"raw": b"\x00\xff", "n": 2.5}
    loaded = load_data_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert np.array_equal(loaded["data"], data) and loaded["labels"] == [1, 2] and loaded[b"raw"] == b"\x00\xff"


@pytest.mark.parametrize("target", [("os", "system"), ("builtins", "eval"), ("numpy", "load"),
                                    ("subprocess", "Popen"), ("torch", "load")])
def test_any_other_global_is_refused(target: tuple[str, str]) -> None:
    module, name = target
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."  # protocol 2: GLOBAL module name
    with pytest.raises(RefusedGlobal, match=f"{module}.{name}"):
        load_data_pickle(io.BytesIO(payload))


# ---- pickles that load but do not hold CIFAR arrays: refused, never cast -----------------------------------
def _real_split(shared_data: Path, n: int = 8) -> dict:
    with open(shared_data / "cifar-100-python" / "test", "rb") as f:
        real = load_data_pickle(f, encoding="latin1")
    return {"data": real["data"][:n], "fine_labels": list(real["fine_labels"][:n])}


def _rewrite(root: Path, shared_data: Path, train: object, meta: object | None = None) -> Path:
    """A cifar-100-python folder of real images (the shared test split) whose train file is ``train``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "test").write_bytes(pickle.dumps(_real_split(shared_data)))
    (folder / "train").write_bytes(pickle.dumps(train))
    if meta is None:
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def _spoiled(kind: str, split: dict) -> object:
    data = split["data"]
    return {
        "float32 in [0, 1]": {**split, "data": data.astype(np.float32) / 255},
        "int64": {**split, "data": data.astype(np.int64) * 4},
        "wrong shape": {**split, "data": data.reshape(-1, 3, 32, 32)},
        "missing key": {"data": data},
        "not a dict": [data, split["fine_labels"]],
        "float labels": {**split, "fine_labels": [float(v) + 0.5 for v in split["fine_labels"]]},
        "too few labels": {**split, "fine_labels": split["fine_labels"][:-1]},
        "data a list": {**split, "data": data.tolist()},
    }[kind]


SPOILED = {
    "float32 in [0, 1]": "stores its images as float32; CIFAR-100 pickles hold uint8 pixels (0-255)",
    "int64": "stores its images as int64; CIFAR-100 pickles hold uint8 pixels (0-255)",
    "wrong shape": "is not a CIFAR-100 pickle (data shape (8, 3, 32, 32), expected (N, 3072))",
    "missing key": "is not a CIFAR-100 pickle (needs the keys 'data' and 'fine_labels', found ['data'])",
    "not a dict": "is not a CIFAR-100 pickle (needs the keys 'data' and 'fine_labels', found list)",
    "float labels": "is not a CIFAR-100 pickle ('fine_labels' must be 8 integers, one per image)",
    "too few labels": "is not a CIFAR-100 pickle ('fine_labels' must be 8 integers, one per image)",
    "data a list": "is not a CIFAR-100 pickle ('data' is a list, not an array)",
}


@pytest.mark.filterwarnings("ignore:.*not the canonical")
@pytest.mark.parametrize("kind", list(SPOILED))
def test_a_cifar_split_with_wrong_dtype_shape_or_keys_is_one_line_exit_2(
    kind: str, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _rewrite(tmp_path / "data", shared_data, _spoiled(kind, _real_split(shared_data)))
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    run_dir = tmp_path / "run"
    code = main(["train", str(config), "data.name=cifar100", f"data.root={root}", f"output_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pckd: error:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pckd: error: data.root: '{root / 'cifar-100-python' / 'train'}' {SPOILED[kind]}")
    assert not run_dir.exists()


@pytest.mark.filterwarnings("ignore:.*not the canonical")
@pytest.mark.parametrize("meta", [{"coarse_label_names": []}, {"fine_label_names": [1, 2]}, [1, 2]])
def test_a_meta_file_without_class_names_is_one_line(meta: object, shared_data: Path, tmp_path: Path) -> None:
    root = _rewrite(tmp_path / "data", shared_data, _real_split(shared_data), meta=meta)
    with pytest.raises(UserError, match="meta' is not a CIFAR-100 pickle \\(no list of class names under "
                                        "'fine_label_names'\\)"):
        load_cifar("cifar100", root, train=True)


@pytest.mark.filterwarnings("ignore:.*not the canonical")
def test_real_uint8_images_still_load_exactly(shared_data: Path, tmp_path: Path) -> None:
    split = _real_split(shared_data)
    root = _rewrite(tmp_path / "data", shared_data, split)
    images, labels, names = load_cifar("cifar100", root, train=True)
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
    assert images.flatten(1).numpy().tolist() == split["data"].tolist()  # pixel for pixel, no conversion
    assert labels.tolist() == split["fine_labels"] and len(names) == 100
