"""CIFAR pickles: the shared re-split CIFAR-100, synthetic CIFAR-10 files, subsets and error messages."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pckd.config.schema import DataConfig
from pckd.data import build_data, cifar
from pckd.data.cifar import load_cifar
from pckd.data.subset import check_labels, limit, select_classes
from pckd.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore:.*not the canonical")


def _noncanonical(records: list[warnings.WarningMessage]) -> list[str]:
    return [str(r.message) for r in records if "not the canonical" in str(r.message)]


@pytest.fixture(scope="module")
def cifar100(shared_data: Path):
    """Both splits of the shared CIFAR-100, loaded with the once-per-process warning state reset."""
    saved = set(cifar._warned_noncanonical)
    cifar._warned_noncanonical.clear()
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            train = load_cifar("cifar100", shared_data, train=True)
            test = load_cifar("cifar100", shared_data, train=False)
    finally:
        cifar._warned_noncanonical.update(saved)
    return train, test, _noncanonical(records)


def test_shared_cifar100_sizes_and_classes(cifar100):
    (x_train, y_train, names), (x_test, y_test, test_names), _ = cifar100
    assert x_train.shape == (50000, 3, 32, 32) and x_train.dtype == torch.uint8
    assert x_test.shape == (10000, 3, 32, 32) and x_test.dtype == torch.uint8
    assert y_train.dtype == torch.int64 and y_train.shape == (50000,)
    assert len(names) == 100 and names == test_names
    assert names[0] == "apple" and names[-1] == "worm"
    # The re-split keeps 500 training and 100 test images per class.
    assert torch.equal(torch.bincount(y_train, minlength=100), torch.full((100,), 500))
    assert torch.equal(torch.bincount(y_test, minlength=100), torch.full((100,), 100))


def test_shared_cifar100_warns_once(cifar100):
    messages = cifar100[2]
    assert len(messages) == 1
    assert "CIFAR-100" in messages[0] and "not the canonical" in messages[0]


def test_pixels_follow_the_pickle_layout(cifar100, shared_data: Path):
    x_test, y_test = cifar100[1][0], cifar100[1][1]
    with open(shared_data / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    for i in (0, 1234, 9999):
        row = raw["data"][i]
        assert torch.equal(x_test[i, 0].flatten(), torch.from_numpy(row[:1024]))  # red plane first
        assert torch.equal(x_test[i, 2].flatten(), torch.from_numpy(row[2048:]))
        assert int(y_test[i]) == raw["fine_labels"][i]


def test_root_may_be_the_dataset_folder_itself(cifar100, shared_data: Path):
    images, labels, _ = load_cifar("cifar100", shared_data / "cifar-100-python", train=False)
    assert torch.equal(images, cifar100[1][0]) and torch.equal(labels, cifar100[1][1])


def test_class_subset_and_limit(cifar100):
    x_train, y_train, _ = cifar100[0]
    x10, y10 = select_classes(x_train, y_train, 10, available=100)
    assert x10.shape[0] == 5000 and int(y10.min()) == 0 and int(y10.max()) == 9
    keep = torch.nonzero(y_train < 10).squeeze(1)
    assert torch.equal(x10, x_train[keep])  # order kept
    x_lim, y_lim = limit(x10, y10, 123)
    assert x_lim.shape[0] == 123 and torch.equal(y_lim, y10[:123])
    with pytest.raises(UserError, match=r"data.classes=101 .*1\.\.100"):
        select_classes(x_train, y_train, 101, available=100)
    with pytest.raises(UserError, match="data.test_limit=0"):
        limit(x10, y10, 0, key="data.test_limit")


def test_build_data_cifar100_subset(shared_data: Path):
    cfg = DataConfig(name="cifar100", root=str(shared_data), classes=10, test_limit=300)
    bundle = build_data(cfg, batch_size=64, eval_batch_size=100, seed=0, device=torch.device("cpu"))
    assert (bundle.num_classes, bundle.train_size, bundle.test_size, bundle.input_size) == (10, 5000, 300, 32)
    assert len(bundle.class_names) == 10 and len(bundle.train) == 79 and len(bundle.test) == 3
    mean, std = bundle.augment.normalize.mean, bundle.augment.normalize.std
    assert mean == (0.5071, 0.4867, 0.4408) and std == (0.2675, 0.2565, 0.2761)
    with pytest.raises(UserError) as err:
        build_data(DataConfig(name="cifar100", root=str(shared_data), classes=10, num_classes=100), 64, 100, 0, "cpu")
    assert str(err.value) == (
        "data.num_classes=100 but the data has 10 classes (data.classes=10); remove data.num_classes or set it to 10"
    )


def test_missing_root_message(tmp_path: Path):
    with pytest.raises(UserError) as err:
        load_cifar("cifar100", tmp_path, train=True)
    assert str(err.value) == (
        f"data.root: no CIFAR-100 files under '{tmp_path}' (expected {tmp_path}/cifar-100-python/train); "
        "set data.root=... or data.download=true to fetch them (needs internet)"
    )
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="data.root: no CIFAR-10 files"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path)), 64, 100, 0, "cpu")


# --- synthetic CIFAR-10 files -------------------------------------------------------------------------------


def _write_cifar10(folder: Path, per_batch: int = 2, label_shift: int = 0) -> np.ndarray:
    """Writes the 7 CIFAR-10 pickles with random pixels; returns all training rows in file order."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) + label_shift for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        if name != "test_batch":
            rows.append(data)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)
    return np.concatenate(rows)


def test_synthetic_cifar10_layout_and_warning(tmp_path: Path, monkeypatch):
    rows = _write_cifar10(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr(cifar, "_warned_noncanonical", set())
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        images, _, names = load_cifar("cifar10", tmp_path, train=True)
        load_cifar("cifar10", tmp_path, train=False)
    assert len(_noncanonical(records)) == 1 and "CIFAR-10" in _noncanonical(records)[0]
    assert images.shape == (10, 3, 32, 32) and names == [f"c{k}" for k in range(10)]
    assert torch.equal(images.reshape(10, -1), torch.from_numpy(rows))


def test_out_of_range_label_names_the_file(tmp_path: Path):
    _write_cifar10(tmp_path / "cifar-10-batches-py", label_shift=5)  # labels up to 14 with 10 names
    with pytest.raises(UserError, match=r"data: label 1\d in '.*data_batch_1' is outside \[0, 10\)"):
        load_cifar("cifar10", tmp_path, train=True)
    with pytest.raises(UserError, match=r"label -1 in 'here'"):
        check_labels(torch.tensor([0, -1]), 10, source="here")


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_cifar10(root, train=True, download=False):
        calls.append((root, download))
        _write_cifar10(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, _, _ = load_cifar("cifar10", tmp_path, train=False, download=True)
    assert calls == [(str(tmp_path), True)] and images.shape == (2, 3, 32, 32)


def test_failed_download_is_a_user_error(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    def offline(root, train=True, download=False):
        raise OSError("Name or service not known\nmore")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    expected = r"^data.download: could not fetch CIFAR-100 .*OSError: Name or service not known more"
    with pytest.raises(UserError, match=expected):
        load_cifar("cifar100", tmp_path, train=True, download=True)


def test_unknown_dataset_name():
    # the schema's choice refuses it as the section is built, before any data is touched
    expected = "config key 'data.name'='mnist' is not one of cifar100, cifar10, stl10, tinyimagenet, imagefolder, digits"
    with pytest.raises(UserError, match=expected):
        build_data(DataConfig(name="mnist"), 64, 100, 0, "cpu")
