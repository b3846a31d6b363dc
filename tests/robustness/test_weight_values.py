"""Loaded weights are checked before use: NaN/inf values and integer tensors where the model has floats are
refused with one line naming the file and the key it came from (never advice about train.lr, never NaN in JSON)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pckd.cli import main
from pckd.models import create_model


def _weights(poison: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = create_model("resnet8", num_classes=10).state_dict()
    if poison in ("nan", "inf"):
        state["layer1.0.conv1.weight"][0, 0, 0, 0] = float(poison)
    return state


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_a_teacher_with_nonfinite_weights_is_refused_before_training(
    poison: str, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": _weights(poison)}, teacher)
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "method=kd", "teacher.arch=resnet8", f"teacher.checkpoint={teacher}",
                 f"output_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err == (f"pckd: error: checkpoint '{teacher}' (teacher.checkpoint) holds NaN or infinite weights in 1 of "
                   "47 tensors (first 'layer1.0.conv1.weight'); it cannot be used: take an earlier checkpoint of "
                   "that run\n")
    assert "train.lr" not in err and not run_dir.exists()


def test_eval_of_nonfinite_weights_is_exit_2_not_nan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "student.pt"
    torch.save({"model": _weights("nan")}, path)
    assert main(["eval", str(path), "student.arch=resnet8", "data.name=digits", "data.test_limit=8"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "NaN" not in captured.out
    assert captured.err.startswith(f"pckd: error: checkpoint '{path}' (student.checkpoint) holds NaN or infinite")


def test_integer_weights_in_safetensors_are_refused_not_cast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "student.safetensors"
    save_file({k: (v * 100).to(torch.int64) for k, v in _weights("").items()}, str(path))
    assert main(["eval", str(path), "student.arch=resnet8", "data.name=digits", "data.test_limit=8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint '{path}' (student.checkpoint) stores '" in err
    assert "as torch.int64 where the model has torch.float32 (47 tensors in all)" in err


def test_integer_buffers_where_the_model_has_integers_still_load(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "student.pt"
    state = _weights("")
    assert state["bn1.num_batches_tracked"].dtype == torch.int64  # BatchNorm's counter is an integer
    torch.save({"model": state}, path)
    assert main(["eval", str(path), "student.arch=resnet8", "data.name=digits", "data.test_limit=8"]) == 0
    assert '"n": 8' in capsys.readouterr().out
