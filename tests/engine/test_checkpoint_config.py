"""`pckd eval` and `pckd probe` read their keys through the same config path as `pckd train`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pckd.cli import main
from pckd.engine.checkpoint_config import load_checkpoint_config
from pckd.errors import UserError
from pckd.models import create_model


class Marker:
    """A pickled object: loading a file that holds one needs the trust flag."""

    def __init__(self, note: str) -> None:
        self.note = note


@pytest.fixture()
def untrusted_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save({"model": create_model("resnet8", 10).state_dict(), "meta": Marker("made elsewhere")}, path)
    return path


@pytest.mark.parametrize("word", ["true", "True", "yes", "1", "on"])
def test_trust_flag_is_read_as_train_reads_it(untrusted_file: Path, word: str) -> None:
    loaded = load_checkpoint_config(untrusted_file, ["student.arch=resnet8", f"student.trust_checkpoint={word}"])
    assert isinstance(loaded.state["meta"], Marker)
    assert loaded.cfg.student.checkpoint == str(untrusted_file) and loaded.cfg.student.trust_checkpoint is True


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_refusal_names_the_key_the_user_gives(untrusted_file: Path, command: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main([command, str(untrusted_file), "student.arch=resnet8", "data.name=digits", "train.device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "(student.checkpoint)" in err and "student.trust_checkpoint=true" in err
    assert "teacher." not in err


@pytest.mark.parametrize("word", ["yes", "1"])
def test_eval_with_trust_words_runs(untrusted_file: Path, word: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", str(untrusted_file), "student.arch=resnet8", f"student.trust_checkpoint={word}",
                 "data.name=digits", "data.test_limit=20", "train.device=cpu"])
    assert code == 0, capsys.readouterr().err
    assert '"top1"' in capsys.readouterr().out


def test_missing_file_names_student_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"\(student\.checkpoint\) not found"):
        load_checkpoint_config(tmp_path / "missing.safetensors", ["student.arch=resnet8"])
