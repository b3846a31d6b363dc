"""The embedded digits dataset and the build_data factory on it (no shared data needed)."""

from __future__ import annotations

import pytest
import torch

from pckd.config.schema import DataConfig
from pckd.data import build_data
from pckd.data.digits import digits_normalization, load_digits_split
from pckd.errors import UserError


def test_shapes_split_and_determinism():
    x_train, y_train, names = load_digits_split(train=True)
    x_test, y_test, _ = load_digits_split(train=False)
    assert x_train.shape == (1437, 3, 32, 32) and x_test.shape == (360, 3, 32, 32)
    assert x_train.dtype == torch.uint8 and y_train.dtype == torch.int64
    assert names == [str(d) for d in range(10)]
    assert set(y_train.tolist()) == set(range(10)) and set(y_test.tolist()) == set(range(10))
    counts = torch.bincount(y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified
    assert int(x_train.max()) == 255 and int(x_train.min()) == 0
    assert torch.equal(x_train[:, 0], x_train[:, 2])  # grey in RGB
    blocks = x_train[:, 0].reshape(-1, 8, 4, 8, 4)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))  # nearest-neighbour 4x4 blocks
    again_x, again_y, _ = load_digits_split(train=False)
    assert torch.equal(again_x, x_test) and torch.equal(again_y, y_test)
    again_x[0] = 0  # callers get their own tensors
    assert not torch.equal(load_digits_split(train=False)[0][0], again_x[0])


def test_normalisation_from_the_training_split():
    mean, std = digits_normalization()
    x = load_digits_split(train=True)[0].double() / 255
    assert mean[0] == pytest.approx(float(x.mean()), abs=1e-9) and std[0] == pytest.approx(float(x.std()), abs=1e-6)
    assert mean[0] == mean[1] == mean[2]


def test_build_data_digits():
    cfg = DataConfig(name="digits", train_limit=100, num_classes=10)
    bundle = build_data(cfg, batch_size=32, eval_batch_size=64, seed=0, device=torch.device("cpu"))
    assert (bundle.train_size, bundle.test_size, bundle.num_classes, bundle.input_size) == (100, 360, 10, 32)
    assert len(bundle.train) == 4 and len(bundle.test) == 6
    batch = next(iter(bundle.train))
    views = bundle.augment.rotated_views(batch.images)
    assert views.shape == (128, 3, 32, 32) and views.dtype == torch.float32
    with pytest.raises(UserError, match=r"^data.num_classes=7 but the data has 5 classes \(data.classes=5\)"):
        build_data(DataConfig(name="digits", classes=5, num_classes=7), 32, 64, 0, "cpu")
    with pytest.raises(UserError, match=r"^data.num_classes=7 but the data has 10 classes; remove"):
        build_data(DataConfig(name="digits", num_classes=7), 32, 64, 0, "cpu")
