"""Checkpoint files: every accepted layout loads, bad files give one-line UserErrors, pickled code never runs."""

from __future__ import annotations

import argparse
import collections
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.errors import UserError
from pckd.models import create_model, export_safetensors, extract_state_dict, load_weights, read_checkpoint


class _Payload:
    """Unpickling this writes a marker file: a stand-in for arbitrary code hidden in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture()
def source() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10).eval()
    with torch.no_grad():  # non-default BN statistics so that a missed buffer would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _layouts(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "repdistiller": {"epoch": 240, "model": state, "best_acc": torch.tensor(73.1), "optimizer": {"state": {}}},
        "state_dict": {"state_dict": state, "epoch": 3},
        "bare": state,
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}},
        "compiled_ddp": {f"module._orig_mod.{k}": v for k, v in state.items()},
        "pckd": {"format": "pckd", "model": state, "epoch": 5, "config": {"method": "pckd"}},
    }


@pytest.mark.parametrize("layout", ["repdistiller", "state_dict", "bare", "ddp", "compiled_ddp", "pckd"])
def test_every_layout_loads_into_resnet8(layout: str, source: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / f"{layout}.pth"
    torch.save(_layouts(source.state_dict())[layout], path)
    target = create_model("resnet8", num_classes=10).eval()
    assert load_weights(target, path) is target
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_extract_state_dict_accepts_a_module(source: torch.nn.Module) -> None:
    assert list(extract_state_dict({"model": source})) == list(source.state_dict())
    with pytest.raises(UserError, match="no model weights"):
        extract_state_dict({"epoch": 3, "lr": 0.1}, source="run.pt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'.*nope\.pth' \(teacher\.checkpoint\) not found"):
        read_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file(legacy: bool, source: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"model": source.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pth.*is truncated or corrupt") as info:
        load_weights(create_model("resnet8", num_classes=10), path, key_name="student.init")
    assert "student.init" in str(info.value) and "\n" not in str(info.value)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "extra": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UserError) as info:
        read_checkpoint(path, key_name="teacher.checkpoint")
    message = str(info.value)
    assert "evil.pth" in message and "teacher.trust_checkpoint=true" in message and "NOT" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="trust_checkpoint"):
        load_weights(create_model("resnet8", num_classes=10), path)
    assert not marker.exists()


def test_trusted_file_with_objects_loads(source: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "with_objects.pth"
    torch.save({"model": source.state_dict(), "history": collections.OrderedDict(a=1), "fn": print}, path)
    with pytest.raises(UserError, match=r"\(print\).*student.trust_checkpoint"):
        read_checkpoint(path, key_name="student.checkpoint")
    assert read_checkpoint(path, trust=True)["fn"] is print
    target = create_model("resnet8", num_classes=10)
    load_weights(target, path, trust=True)
    torch.testing.assert_close(target.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def _written_on_cuda_device(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save of tensors that lived on cuda:0, as a GPU training script writes them: the storages are
    tagged with location 'cuda:0' (re-tagged here through torch's own location hook, so no GPU is needed)."""
    import torch.serialization as ser

    original = ser.location_tag
    ser.location_tag = lambda storage: "cuda:0"  # type: ignore[assignment]
    try:
        torch.save(state, path)
    finally:
        ser.location_tag = original


@pytest.mark.parametrize("layout", ["repdistiller_last", "repdistiller_best", "mdistiller_student_best",
                                    "cuda_tagged", "dataparallel"])
def test_published_formats_load_without_the_trust_flag(source: torch.nn.Module, tmp_path: Path, layout: str) -> None:
    import numpy as np

    state = source.state_dict()
    if layout == "repdistiller_last":  # train_teacher.py / train_student.py: the options ride along
        path = tmp_path / "resnet8_last.pth"
        opt = argparse.Namespace(model="resnet8", learning_rate=0.05, lr_decay_epochs=[150, 180, 210], trial="0")
        torch.save({"opt": opt, "model": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    elif layout == "repdistiller_best":  # the accuracy is a numpy/tensor scalar
        path = tmp_path / "resnet8_best.pth"
        torch.save({"epoch": 240, "model": state, "best_acc": np.float64(72.34), "accuracy": torch.tensor(72.3)}, path)
    elif layout == "mdistiller_student_best":  # extension-less file, numpy accuracy
        path = tmp_path / "student_best"
        torch.save({"model": state, "optimizer": {}, "best_acc": np.float32(70.1), "epoch": np.int64(240)}, path)
    elif layout == "cuda_tagged":
        path = tmp_path / "ckpt_epoch_240.pth"
        _written_on_cuda_device({"model": state, "accuracy": np.float64(72.34)}, path)
    else:  # nn.DataParallel / DDP
        path = tmp_path / "dp.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    target = create_model("resnet8", num_classes=10)
    load_weights(target, path)  # no trust flag
    for key, value in state.items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_the_published_format_allow_list_still_refuses_code(tmp_path: Path) -> None:
    import numpy as np

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # a Namespace-shaped file whose value would run a command when unpickled
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "resnet8_last.pth"
    torch.save({"opt": argparse.Namespace(model="resnet8", hook=Payload()), "best_acc": np.float64(1.0)}, path)
    with pytest.raises(UserError, match=r"\(posix.system\) and was NOT loaded or executed"):
        read_checkpoint(path)
    assert not marker.exists()
    arrays = tmp_path / "arrays.pth"
    torch.save({"stats": np.zeros(3)}, arrays)  # numpy arrays are not in the allow-list
    with pytest.raises(UserError, match="numpy"):
        read_checkpoint(arrays)


def test_wrong_architecture_names_file_keys_and_guess(source: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "teacher.pth"
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(UserError) as info:
        load_weights(create_model("resnet14", num_classes=10), path)
    message = str(info.value)
    assert "teacher.pth" in message and "missing layer1.1." in message
    assert "'resnet8' checkpoint with 10 classes" in message and "\n" not in message

    with pytest.raises(UserError, match=r"shape mismatch fc\.weight \[10, 64\] in file vs \[100, 64\]"):
        load_weights(create_model("resnet8", num_classes=100), path)


def test_non_strict_skips_extra_and_missing_keys(source: torch.nn.Module, tmp_path: Path) -> None:
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["proj.weight"] = torch.zeros(3)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    target = create_model("resnet8", num_classes=10)
    load_weights(target, path, strict=False)
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight)


def test_safetensors_export_round_trips(source: torch.nn.Module, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pth"
    torch.save({"format": "pckd", "model": {f"module.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    out = export_safetensors(ckpt, tmp_path / "resnet8.safetensors")
    loaded = read_checkpoint(out)
    assert sorted(loaded) == sorted(source.state_dict())  # safetensors stores keys sorted
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    target = create_model("resnet8", num_classes=10).eval()
    load_weights(target, out)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="bad.safetensors.*truncated or corrupt"):
        read_checkpoint(path)
