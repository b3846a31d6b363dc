"""Precision and speed flags against plain float32, on one PCKD training step on the shared CIFAR-100.

Each flag's run starts from the same weights and takes the same batch (same seed, same data slice) as the
float32 run (whose teacher runs as by default: BatchNorms folded, channels_last on CPU), so its step-1 losses and the weights after the step must agree with float32's:

| flag | step-1 losses (relative) | the step's update of all weights (relative norm) |
|---|---|---|
| ``train.channels_last=true`` | 1e-5 | 3e-3 |
| plain teacher (``train.teacher_fold_bn=false train.teacher_channels_last=false``) | 1e-5 | 1e-3 |
| ``train.compile=true`` (inductor, CPU; slow) | 1e-4 | 1e-3 |
| ``train.precision=bf16`` (autocast; losses in float32) | 2e-2 | 5e-2 |

The update is compared as a whole: single small tensors such as BatchNorm biases start at 0 and get gradients
that are sums which nearly cancel, so their own relative differences are large even between two float32 runs
that only sum in another order. channels_last gets a looser bound than one might expect: PyTorch's CPU
BatchNorm kernel for channels_last accumulates its statistics less precisely than the NCHW one (measured on
this project's CI machine: 2e-5 vs 2e-7 relative output error against float64 for inputs of mean 3, std 0.5),
which puts the first convolutions' gradients ~1e-2 (NCHW: 2e-4) from the float64 ones and the whole update
~1e-3 from NCHW float32's.

PCKD exercises everything a flag can break: 4 rotated views, the teacher, the heads (with BatchNorm1d), the
supcon contrast and the per-sample weights. The teacher is a seeded random-init resnet8 (enough for equality).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pckd.config import load_config
from pckd.data.info import DataInfo
from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.trainer import Trainer

pytestmark = pytest.mark.slow

TERMS = ("ce", "kd", "ccc", "fa", "ca", "loss")


def _run(shared_data: Path, teacher: Path, out: Path, flags: list[str]) -> tuple[dict, torch.Tensor, Trainer]:
    """One PCKD step (64 images = 256 views) plus a small evaluation; returns the step's metrics, the update
    of all trainable weights (flattened) and the trainer."""
    cfg = load_config(None, [
        "method=pckd", "student.arch=resnet8", "teacher.arch=resnet8", f"teacher.checkpoint={teacher}",
        "data.name=cifar100", f"data.root={shared_data}", "data.classes=10", "data.train_limit=64",
        "data.test_limit=50", "train.epochs=1", "train.batch_size=64", "train.eval_batch_size=50",
        "train.device=cpu", "train.progress=false", "train.log_interval=1", "train.eval_teacher=false",
        f"output_dir={out}", *flags])
    trainer = Trainer(cfg)
    params = [p for p in trainer.distiller.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten().clone() for p in params])
    trainer.fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if r["kind"] == "step")
    after = torch.cat([p.detach().float().flatten() for p in params])
    assert load_checkpoint_file(out / "last.pt")["epoch"] == 1
    return step, after - before, trainer


@pytest.fixture(scope="module")
def float32_run(shared_data, random_teacher, tmp_path_factory):
    step, update, _ = _run(shared_data, random_teacher, tmp_path_factory.mktemp("fp32") / "run", [])
    return step, update


def _compare(float32_run, step: dict, update: torch.Tensor, loss_rel: float, update_rel: float) -> None:
    ref_step, ref_update = float32_run
    for term in TERMS:
        assert step[f"train/{term}"] == pytest.approx(ref_step[f"train/{term}"], rel=loss_rel), term
    gap = float((update - ref_update).norm() / ref_update.norm())
    assert 0 < gap < update_rel, gap  # > 0: the flag did change the numerics


def test_channels_last_matches_float32(shared_data, random_teacher, float32_run, tmp_path):
    step, update, trainer = _run(shared_data, random_teacher, tmp_path / "cl", ["train.channels_last=true"])
    assert trainer.distiller.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.distiller.teacher.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _compare(float32_run, step, update, loss_rel=1e-5, update_rel=3e-3)


def test_bf16_autocast_matches_float32_with_losses_in_float32(shared_data, random_teacher, float32_run, tmp_path):
    step, update, _ = _run(shared_data, random_teacher, tmp_path / "bf16", ["train.precision=bf16"])
    _compare(float32_run, step, update, loss_rel=2e-2, update_rel=5e-2)


def test_bf16_step_runs_the_networks_in_bf16_and_the_losses_in_float32():
    """Under CPU bf16 autocast the student's logits are bf16 while every loss term PCKD returns is float32."""
    from pckd.data.augment import BatchAugment
    from pckd.data.batch import Batch
    from pckd.methods.pckd import PCKD, PCKDParams
    from pckd.models import create_model

    torch.manual_seed(0)
    model = PCKD(create_model("resnet8", 10), create_model("resnet8", 10), PCKDParams(), DataInfo(num_classes=10))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    batch = Batch(images, torch.arange(8) % 10, torch.arange(8), BatchAugment((0.5,) * 3, (0.25,) * 3))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(batch, 1)
    assert out.logits.dtype == torch.bfloat16
    assert {k: v.dtype for k, v in out.losses.items()} == dict.fromkeys(("ce", "kd", "ccc", "fa", "ca"), torch.float32)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.student.parameters())


def test_compile_matches_float32(shared_data, random_teacher, float32_run, tmp_path):
    """torch.compile (inductor) on CPU: the student's forward_features, which PCKD calls, is compiled."""
    pytest.importorskip("torch._inductor")
    try:
        step, update, trainer = _run(shared_data, random_teacher, tmp_path / "compile", ["train.compile=true"])
    except Exception as exc:
        if "compile" in type(exc).__name__.lower() or "inductor" in str(exc).lower():
            pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}")
        raise
    assert hasattr(trainer.distiller.student.forward_features, "_torchdynamo_orig_callable")
    _compare(float32_run, step, update, loss_rel=1e-4, update_rel=1e-3)


def test_default_teacher_preparation_matches_the_plain_teacher(shared_data, random_teacher, float32_run, tmp_path):
    """By default the frozen teacher runs with its BatchNorms folded and (on CPU) in channels_last: the same
    function as the plain teacher, so the student's step matches within float32 rounding."""
    plain_flags = ["train.teacher_fold_bn=false", "train.teacher_channels_last=false"]
    step, update, trainer = _run(shared_data, random_teacher, tmp_path / "plain", plain_flags)
    teacher = trainer.distiller.teacher
    assert isinstance(teacher.bn1, torch.nn.BatchNorm2d) and teacher.conv1.weight.is_contiguous()
    _compare(float32_run, step, update, loss_rel=1e-5, update_rel=1e-3)
    _, _, default = _run(shared_data, random_teacher, tmp_path / "default", [])
    assert isinstance(default.distiller.teacher.bn1, torch.nn.Identity)  # folded into conv1
    assert default.distiller.teacher.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_is_refused_off_cuda() -> None:
    from pckd.config import load_config
    from pckd.engine.build import build
    from pckd.errors import UserError

    cfg = load_config(None, ["student.arch=resnet8", "data.name=digits", "train.device=cpu", "train.precision=fp16"])
    with pytest.raises(UserError, match="train.precision=fp16 needs a CUDA device .*use train.precision=bf16"):
        build(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_trains_with_a_gradient_scaler(tmp_path) -> None:
    from pckd.config import load_config
    from pckd.engine.trainer import Trainer

    cfg = load_config(None, ["student.arch=resnet8", "data.name=digits", "data.train_limit=64", "train.epochs=1",
                             "train.batch_size=16", "train.device=cuda", "train.precision=fp16",
                             "train.progress=false", f"output_dir={tmp_path}/run"])
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert trainer.scaler is not None and trainer.scaler.get_scale() > 0 and summary["epochs"] == 1
