"""README, "Distil your own model on your own data": the two example configs run as the README gives them, on a
real ImageFolder (shared CIFAR-10 JPEGs), from published weights held in torchvision's cache (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pckd.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "examples" / "own_data"


def _cache(torch_home: Path, arch: str, weights: str) -> None:
    from torchvision.models import get_model, get_model_weights

    w = get_model_weights(arch)[weights]
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(get_model(arch, num_classes=len(w.meta["categories"])).state_dict(), cache / Path(w.url).name)


@pytest.mark.slow
def test_teacher_then_student_from_published_weights(shared_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _cache(tmp_path / "torch", "resnet18", "IMAGENET1K_V1")
    _cache(tmp_path / "torch", "mobilenet_v3_small", "IMAGENET1K_V1")
    small = [f"data.root={shared_data / 'cifar10-jpeg-mini'}", "data.image_size=64", "data.train_limit=40",
             "data.test_limit=20", "data.num_workers=0", "train.epochs=1", "train.batch_size=20",
             "train.eval_batch_size=20", "train.device=cpu", "train.progress=false"]
    teacher_dir = tmp_path / "teacher"
    # the README's commands, with a smaller teacher architecture and a tiny slice of the data
    assert main(["train", str(CONFIGS / "teacher.yaml"), "student.arch=torchvision.resnet18",
                 "student.weights=IMAGENET1K_V1", f"output_dir={teacher_dir}", *small]) == 0
    out = capsys.readouterr().out
    assert "re-initialised the classifier 'fc' (1000 -> 10 classes)" in out
    assert main(["train", str(CONFIGS / "student-kd.yaml"), "teacher.arch=torchvision.resnet18",
                 f"teacher.checkpoint={teacher_dir / 'best.pt'}", f"output_dir={tmp_path / 'student'}", *small]) == 0
    assert "re-initialised the classifier 'classifier.3' (1000 -> 10 classes)" in capsys.readouterr().out
    assert (tmp_path / "student" / "summary.json").is_file()
