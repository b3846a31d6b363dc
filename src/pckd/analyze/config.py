# ruff: noqa: UP045  (Optional[...] as OmegaConf reads it; hp() is the declared-rule field helper)
"""The settings of ``pckd analyze`` (keys ``analyze.*``) and the names of its figures."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional

from pckd.errors import UserError
from pckd.params import Choice, Settings, hp

FIGURES = ("centres", "difficulty", "tsne", "correlation", "calibration")
SECTION = "analyze"


class CheckpointChoice(Choice):
    """Which checkpoint of a run folder is analysed (``analyze.checkpoint``)."""

    best = "best"
    last = "last"


class DifficultySource(Choice):
    """Where the difficulty s_i of Eq. 5 comes from (``analyze.difficulty``)."""

    records = "records"  # the run's preview_records.csv (PCKD runs): s_i as training computed it
    student = "student"  # recomputed with the analysed student on the un-augmented training images


@dataclass
class AnalyzeConfig(Settings):
    """Keys ``analyze.*`` of ``pckd analyze`` (data, device and batch sizes come from ``data.*`` / ``train.*``)."""

    checkpoint: CheckpointChoice = hp(CheckpointChoice.best, doc="run folders: analyse best.pt or last.pt")
    classes: Optional[list[int]] = hp(None, ge=0, doc="class ids of the centres and t-SNE figures; unset: the first 10")
    tsne_points: int = hp(2000, gt=0, doc="at most this many test images in each t-SNE (balanced over the classes)")
    tsne_perplexity: float = hp(30.0, gt=0, doc="t-SNE perplexity (lowered to (n-1)/3 for few points)")
    tsne_iterations: int = hp(500, ge=250, doc="t-SNE optimisation steps")
    seed: int = hp(0, ge=0, lt=2**32, doc="seed of the t-SNE (fixed: the same features give the same map)")
    difficulty: DifficultySource = hp(DifficultySource.records, doc="records (preview_records.csv) | student")
    difficulty_count: int = hp(8, gt=0, le=64, doc="N: the figure shows the N easiest and the N hardest images")
    epoch: Optional[int] = hp(None, gt=0, doc="difficulty from records: the epoch (the CSV holds the last one only)")
    bins: int = hp(15, gt=0, le=100, doc="confidence bins of the reliability diagram and the ECE")
    correlation_vmax: Optional[float] = hp(None, gt=0, doc="top of the correlation colour scale; unset: the max")
    teacher: Optional[str] = hp(None, doc="teacher checkpoint instead of the run's teacher.checkpoint")
    teacher_arch: Optional[str] = hp(None, doc="the architecture of analyze.teacher; unset: the run's teacher.arch")
    output_dir: Optional[str] = hp(None, doc="where the figures go; default <run>/analysis (several runs: the first's)")


AnalyzeConfig.section = SECTION


def parse_figures(text: str | None) -> tuple[list[str], bool]:
    """``--figures centres,tsne`` -> (the names in the canonical order, whether they were asked for explicitly);
    None -> every figure. UserError for an unknown name, with the closest one."""
    if text is None:
        return list(FIGURES), False
    names = [n.strip() for n in text.replace(" ", ",").split(",") if n.strip()]
    if not names:
        raise UserError(f"--figures is empty; give one or more of {', '.join(FIGURES)} (comma-separated)")
    for name in names:
        if name not in FIGURES:
            close = difflib.get_close_matches(name, FIGURES, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"--figures: unknown figure '{name}'{hint}; available: {', '.join(FIGURES)}")
    return [f for f in FIGURES if f in names], True
