"""Fig. 6 is drawn by `pckd report` from a PCKD run's preview_history.json (training writes only the data)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.pckd import PCKD, PCKDParams
from pckd.models import create_model
from pckd.report import write_report
from pckd.report.preview_plot import plot_preview_history, read_history

from .test_report import RESNET, make_run


class PlainViews:
    def rotated_views(self, images: torch.Tensor, n: int = 4) -> torch.Tensor:
        x = images.float() / 255.0
        return torch.stack([torch.rot90(x, j, dims=(2, 3)) for j in range(n)], dim=1).flatten(0, 1)


def _history(epochs: int = 3) -> dict:
    """A real history: a PCKD distiller trained on random batches for ``epochs`` epochs."""
    torch.manual_seed(0)
    d = PCKD(create_model("resnet8", 4), create_model("resnet8", 4), PCKDParams(gamma=1.2), DataInfo(num_classes=4))
    g = torch.Generator().manual_seed(1)
    for epoch in range(1, epochs + 1):
        d.on_epoch_start(epoch)
        for step in range(2):
            images = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
            batch = Batch(images, torch.randint(0, 4, (8,), generator=g), torch.arange(8) + 8 * step, PlainViews())
            d.forward_train(batch, epoch)
        d.on_epoch_end(epoch)
    return d.history


def test_history_plot_has_one_point_per_epoch(tmp_path: Path) -> None:
    history = _history()
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    # the threshold follows gamma^epoch exactly
    assert [e["threshold"] for e in history["epochs"]] == pytest.approx([1.2, 1.44, 1.728])
    path = plot_preview_history(history, tmp_path / "fig6.png", title="test")
    assert path.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*tmp*"))


def test_report_draws_fig6_for_runs_with_a_history(tmp_path: Path) -> None:
    import json

    run = make_run(tmp_path / "runs", "pckd-0", "pckd", RESNET, "resnet8x4", 0, [50.0, 60.0], teacher_top1=79.0)
    (run / "preview_history.json").write_text(json.dumps(_history(2)))
    make_run(tmp_path / "runs", "kd-0", "kd", RESNET, "resnet8x4", 0, [50.0, 55.0], teacher_top1=79.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report([tmp_path / "runs"], tmp_path / "out")
    figures = sorted(p.name for p in (tmp_path / "out").glob("preview_weights-*.png"))
    assert figures == ["preview_weights-runs_pckd-0.png"]


def test_missing_or_damaged_history_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="only PCKD runs record a preview history"):
        read_history(tmp_path)
    (tmp_path / "preview_history.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        read_history(tmp_path)
