"""Config loading: YAML + _base_ + overrides, typed, with one-line errors naming the key."""

from __future__ import annotations

import pytest

from pckd.config import load_config, parse_overrides, to_yaml
from pckd.errors import UserError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["train.lr=0.1", "data.classes=10", "train.milestones=[1,2]", "kd.temperature=2"]) == {
        "train": {"lr": 0.1, "milestones": [1, 2]}, "data": {"classes": 10}, "kd": {"temperature": 2}}


def test_base_files_and_overrides_merge(tmp_path):
    write(tmp_path, "base.yaml", "train: {epochs: 240, lr: 0.05}\ndata: {name: cifar100}\n")
    cfg_path = write(tmp_path, "kd.yaml", "_base_: base.yaml\nmethod: kd\ntrain: {lr: 0.01}\nkd: {temperature: 2}\n")
    cfg = load_config(cfg_path, ["train.epochs=3", "student.arch=resnet8"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.kd.temperature, cfg.student.arch) == (3, 0.01, 2.0, "resnet8")
    assert cfg.output_dir == "runs/kd-resnet8"  # interpolation resolved
    assert "temperature: 2.0" in to_yaml(cfg)


@pytest.mark.parametrize("overrides, fragment", [
    (["train.lr_rate=0.1"], "unknown config key 'train.lr_rate': did you mean 'train.lr'?"),
    (["trian.lr=0.1"], "unknown config key 'trian': did you mean 'train'?"),
    (["train.epochs=ten"], "train.epochs"),
    (["method=kdd"], "unknown method 'kdd' (key 'method'): did you mean 'kd'?"),
    (["kd.temperature=2"], "config section 'kd' belongs to method 'kd' but method=ce"),
    (["train.schedule=linear"], "'train.schedule'='linear' is not one of multistep, cosine"),
    (["train.epochs=0"], "'train.epochs'=0 must be positive"),
    (["resume=true", "overwrite=true"], "choose one"),
    (["train"], "is not of the form key=value"),
])
def test_bad_config_gives_one_line_error(overrides, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="config file '.*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path, "bad.yaml", "train: {lr: [\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_config(bad)
