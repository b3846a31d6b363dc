"""`pckd export` writes a model file that stands on its own: folder created, mode 0644, and a header from which
`pckd eval` rebuilds the network and its data without any key on the command line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.data.digits import load_digits_split
from pckd.engine.export import ARCH_KEY, CLASSES_KEY, NORMALISATION_KEY, input_normalisation
from pckd.models import read_checkpoint, safetensors_metadata

DIGITS_RUN = ["method=ce", "data.name=digits", "student.arch=resnet8", "train.device=cpu", "train.epochs=1",
              "train.batch_size=64", "train.progress=false", "data.train_limit=256", "data.test_limit=200"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    config = folder / "ce.yaml"
    config.write_text("method: ce\n")
    run = folder / "run"
    assert main(["train", str(config), *DIGITS_RUN, f"output_dir={run}"]) == 0
    return run


def test_export_creates_the_folder_with_a_shareable_mode_and_a_header(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "nested" / "student.safetensors"
    old_umask = os.umask(0o077)  # even a strict umask must not leave a file only its owner can read
    try:
        assert main(["export", str(digits_run / "best.pt"), str(out)]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    meta = safetensors_metadata(out)
    assert meta[ARCH_KEY] == "resnet8" and meta[CLASSES_KEY] == "10"
    norm = json.loads(meta[NORMALISATION_KEY])
    images, _, _ = load_digits_split(train=False)  # the side the network was trained on, read off the data
    assert norm["input_size"] == images.shape[-1] == images.shape[-2]
    assert len(norm["mean"]) == 3 and len(norm["std"]) == 3
    assert sorted(read_checkpoint(out)) == sorted(read_checkpoint(digits_run / "best.pt", trust=False)["model"])


def test_eval_of_an_export_needs_no_keys_and_matches_the_checkpoint(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student.safetensors"
    assert main(["export", str(digits_run / "best.pt"), str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(digits_run / "best.pt"), "train.device=cpu"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out), "train.device=cpu"]) == 0
    from_export = json.loads(capsys.readouterr().out)
    assert from_export["arch"] == "resnet8" and from_export["data"] == "digits"
    assert from_export["top1"] == from_checkpoint["top1"] and from_export["top5"] == from_checkpoint["top5"]


def test_a_plain_weights_file_still_needs_its_architecture(digits_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file(read_checkpoint(digits_run / "best.pt")["model"], str(plain))
    capsys.readouterr()
    assert main(["eval", str(plain), "train.device=cpu"]) == 2
    assert "does not say its architecture; add student.arch=NAME" in capsys.readouterr().err


def test_normalisation_of_each_dataset_is_the_training_one() -> None:
    assert input_normalisation({"name": "cifar100"}) == {
        "mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761], "input_size": 32}
    assert input_normalisation({"name": "imagefolder", "image_size": 160})["input_size"] == 160  # type: ignore[index]
    assert input_normalisation({"name": "unknown"}) is None
