"""``pckd analyze``: the figures of the chosen names for one or more runs, each as a PNG plus the JSON of the
numbers behind it, in ``<first run>/analysis/`` (or ``analyze.output_dir``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pckd import run_folder
from pckd.analyze.calibration import plot_calibration, reliability, softmax_confidence
from pckd.analyze.centres import centres_numbers, plot_centres
from pckd.analyze.config import AnalyzeConfig, parse_figures
from pckd.analyze.correlation import correlation_difference, plot_correlation
from pckd.analyze.difficulty import difficulty_numbers, difficulty_scores, plot_difficulty, read_records
from pckd.analyze.extract import Outputs, extract
from pckd.analyze.output import write_json
from pckd.analyze.sources import Source, resolve_sources
from pckd.analyze.tsne import embed, neighbour_agreement, plot_tsne, select_points
from pckd.data import DataBundle, build_data
from pckd.data.ordered import ordered_training_loader, training_images
from pckd.engine.build import build_network, resolve_device
from pckd.errors import UserError
from pckd.methods.pckd.records import RECORDS_CSV
from pckd.models.interface import centres

TEACHER_FIGURES = ("correlation",)  # figures that mean nothing without a teacher


class Session:
    """The networks, data and cached outputs one ``pckd analyze`` call shares between its figures."""

    def __init__(self, sources: list[Source], progress: bool) -> None:
        self.sources = sources
        cfg = sources[0].cfg
        self.options: AnalyzeConfig = cfg.analyze
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        self.data: DataBundle = build_data(cfg.data, cfg.train.batch_size, cfg.train.eval_batch_size,
                                           cfg.train.seed, self.device)
        self.names = self.data.class_names
        self.classes = _classes(self.options.classes, self.data.num_classes)
        self.students = [self._network(s.cfg.student, "student") for s in sources]
        self._teachers: dict[tuple[str, str | None, str | None], nn.Module] = {}
        self._test: dict[int, Outputs] = {}
        self.records: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, str]] = {}  # read up front

    def _network(self, model_cfg: Any, role: str) -> nn.Module:
        model = build_network(model_cfg, role, self.data.num_classes, self.data.input_size).to(self.device)
        return model.eval()

    def teacher(self, n: int) -> nn.Module | None:
        """The teacher of source ``n`` (built once per distinct teacher)."""
        t = self.sources[n].teacher
        if t is None:
            return None
        key = (t.arch, t.checkpoint, t.weights)
        if key not in self._teachers:
            self._teachers[key] = self._network(t, "teacher")
        return self._teachers[key]

    def test_outputs(self, model: nn.Module, label: str) -> Outputs:
        """The model's logits and features on the test set (computed once per network)."""
        if id(model) not in self._test:
            self._test[id(model)] = extract(model, self.data.test, self.data.augment, f"{label}: test set",
                                            self.progress)
        return self._test[id(model)]


def _classes(chosen: list[int] | None, num_classes: int) -> list[int]:
    if chosen is None:
        return list(range(min(10, num_classes)))
    bad = [k for k in chosen if k >= num_classes]
    if bad or not chosen:
        raise UserError(f"analyze.classes={chosen} names class {bad[0] if bad else 'none'} but the data has "
                        f"{num_classes} classes (ids 0..{num_classes - 1}); choose ids below {num_classes}")
    return list(dict.fromkeys(chosen))


def _label(source: Source, several: bool) -> str:
    return f"{source.name} ({source.cfg.student.arch})" if several else f"student ({source.cfg.student.arch})"


def _suffix(source: Source, several: bool) -> str:
    return f"-{source.name}" if several else ""


def _centres(s: Session, out: Path) -> dict[str, Any]:
    several, result = len(s.sources) > 1, {}
    for n, source in enumerate(s.sources):
        teacher = s.teacher(n)
        w_s = centres(s.students[n], detach=True)[0].cpu().numpy()
        w_t = centres(teacher, detach=True)[0].cpu().numpy() if teacher is not None else None
        numbers = centres_numbers(w_s, w_t, s.classes, s.names)
        stem = f"centres{_suffix(source, several)}"
        who = f"{source.teacher.arch} -> {source.cfg.student.arch}" if source.teacher else source.cfg.student.arch
        plot_centres(numbers, out / f"{stem}.png", f"Category centres (classifier weights): {who} ({source.name})")
        write_json(numbers, out / f"{stem}.json")
        result[stem] = {"png": str(out / f"{stem}.png"), "mean_cosine": numbers["mean_cosine"]}
    return result


def _correlation(s: Session, out: Path) -> dict[str, Any]:
    several, result = len(s.sources) > 1, {}
    for n, source in enumerate(s.sources):
        teacher = s.teacher(n)
        if teacher is None:
            continue
        t = s.test_outputs(teacher, "teacher")
        st = s.test_outputs(s.students[n], source.name)
        numbers = correlation_difference(t.logits, st.logits, t.labels, s.data.num_classes)
        stem = f"correlation{_suffix(source, several)}"
        plot_correlation(numbers, s.names, out / f"{stem}.png",
                         f"|teacher - student| class correlation of the logits ({source.name})",
                         s.options.correlation_vmax)
        write_json({**numbers, "class_names": s.names}, out / f"{stem}.json")
        result[stem] = {"png": str(out / f"{stem}.png"), "mean": numbers["mean"], "max": numbers["max"]}
    return result


def _panels(s: Session) -> list[tuple[str, nn.Module]]:
    """The networks drawn side by side: the first source's teacher (if any), then every student."""
    several = len(s.sources) > 1
    teacher, spec = s.teacher(0), s.sources[0].teacher
    first = [(f"teacher ({spec.arch})", teacher)] if teacher is not None and spec is not None else []
    return first + [(_label(src, several), m) for src, m in zip(s.sources, s.students)]


def _calibration(s: Session, out: Path) -> dict[str, Any]:
    panels, numbers = [], {}
    for label, model in _panels(s):
        o = s.test_outputs(model, label)
        rel = reliability(*softmax_confidence(o.logits, o.labels), s.options.bins)
        panels.append((label, rel))
        numbers[label] = rel
    plot_calibration(panels, out / "calibration.png", f"Reliability on the test set ({s.options.bins} bins)")
    write_json({"bins": s.options.bins, "models": numbers}, out / "calibration.json")
    return {"calibration": {"png": str(out / "calibration.png"),
                            "ece": {label: rel["ece"] for label, rel in numbers.items()}}}


def _tsne(s: Session, out: Path) -> dict[str, Any]:
    opts = s.options
    panels, numbers = [], {}
    for label, model in _panels(s):
        o = s.test_outputs(model, label)
        pick = select_points(o.labels, s.classes, opts.tsne_points)
        coords = embed(o.features[pick], opts.seed, opts.tsne_perplexity, opts.tsne_iterations)
        panels.append((label, coords, o.labels[pick]))
        numbers[label] = {"index": o.index[pick], "label": o.labels[pick], "coordinates": coords,
                          "knn5_agreement": neighbour_agreement(coords, o.labels[pick])}
    plot_tsne(panels, s.names, out / "tsne.png",
              f"t-SNE of the penultimate features ({len(panels[0][1])} test images, {len(s.classes)} classes)")
    write_json({"seed": opts.seed, "classes": s.classes, "perplexity": opts.tsne_perplexity,
                "iterations": opts.tsne_iterations, "models": numbers}, out / "tsne.json")
    return {"tsne": {"png": str(out / "tsne.png"),
                     "knn5_agreement": {k: v["knn5_agreement"] for k, v in numbers.items()}}}


def _records_difficulty(s: Session, source: Source) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    if source.run_dir is None:
        raise UserError(f"'{source.checkpoint}' is not in a run folder, so it has no {RECORDS_CSV}; "
                        "use analyze.difficulty=student")
    index, labels, scores = read_records(source.run_dir / RECORDS_CSV)
    last = _last_recorded_epoch(source.run_dir)
    if s.options.epoch is not None and last is not None and s.options.epoch != last:
        raise UserError(f"analyze.epoch={s.options.epoch}: {RECORDS_CSV} holds epoch {last} only (the last "
                        f"trained); drop analyze.epoch or use analyze.difficulty=student")
    if index.size and int(index.max()) >= s.data.train_size:
        raise UserError(f"'{source.run_dir / RECORDS_CSV}' names training image {int(index.max())} but the data "
                        f"has {s.data.train_size}; analyse with the run's own data.* settings")
    return index, labels, scores, f"{RECORDS_CSV} (epoch {last})" if last is not None else RECORDS_CSV


def _last_recorded_epoch(run_dir: Path) -> int | None:
    import json

    from pckd.methods.pckd.records import HISTORY_JSON

    try:
        epochs = json.loads((run_dir / HISTORY_JSON).read_text()).get("epochs", [])
        return max(int(e["epoch"]) for e in epochs) if epochs else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _student_difficulty(s: Session, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    loader = ordered_training_loader(s.data, s.sources[n].cfg.train.eval_batch_size,
                                     str(s.sources[n].cfg.data.transforms))
    o = extract(s.students[n], loader, s.data.augment, f"{s.sources[n].name}: training set", s.progress)
    z = torch.from_numpy(o.logits)
    ce = torch.nn.functional.cross_entropy(z, torch.from_numpy(o.labels), reduction="none").numpy()
    return o.index, o.labels, difficulty_scores(ce), "the analysed student, un-augmented training images"


def _difficulty(s: Session, out: Path) -> dict[str, Any]:
    several, result = len(s.sources) > 1, {}
    count = s.options.difficulty_count
    for n, source in enumerate(s.sources):
        if n in s.records:
            index, labels, scores, where = s.records[n]
        else:
            index, labels, scores, where = _student_difficulty(s, n)
        numbers = difficulty_numbers(index, labels, scores, count, where)
        groups = []
        for heading in ("easiest", "hardest"):
            part = numbers[heading]
            images = training_images(s.data, part["index"], str(source.cfg.data.transforms)).numpy()
            groups.append((heading, images, part["label"], part["difficulty"]))
        stem = f"difficulty{_suffix(source, several)}"
        plot_difficulty(groups, s.names, out / f"{stem}.png",
                        f"The {len(groups[0][1])} easiest and hardest training images by s_i ({source.name}; {where})")
        write_json(numbers, out / f"{stem}.json")
        result[stem] = {"png": str(out / f"{stem}.png"), "source": where}
    return result


DRAWERS = {"centres": _centres, "difficulty": _difficulty, "tsne": _tsne, "correlation": _correlation,
           "calibration": _calibration}


def output_folder(sources: list[Source]) -> Path:
    """``analyze.output_dir``, else ``analysis/`` in the first run folder (beside a bare checkpoint); checked,
    not created."""
    first = sources[0]
    chosen = first.cfg.analyze.output_dir
    folder = Path(chosen) if chosen else (first.run_dir or first.checkpoint.parent) / run_folder.ANALYSIS
    if folder.exists() and not folder.is_dir():
        raise UserError(f"analyze.output_dir: '{folder}' exists and is not a folder; set analyze.output_dir=DIR")
    return folder


def _create(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create '{folder}' ({exc.strerror}); set analyze.output_dir=DIR") from None


def run_analyze(inputs: list[str], figures: str | None, overrides: list[str], progress: bool = True) -> dict[str, Any]:
    """Draw the figures (all when ``figures`` is None) and return where they went with their headline numbers.
    A figure that needs a teacher is skipped with a note when no source has one, unless asked for by name."""
    names, explicit = parse_figures(figures)
    sources = resolve_sources(inputs, overrides)
    has_teacher = any(src.teacher is not None for src in sources)
    skipped = [f for f in names if f in TEACHER_FIGURES and not has_teacher]
    if skipped and explicit:
        raise UserError(f"--figures {skipped[0]} compares the student with its teacher, but "
                        f"{'no run names' if len(sources) > 1 else 'the run names no'} teacher; add "
                        "analyze.teacher=PATH analyze.teacher_arch=ARCH or leave it out")
    no_records = any(src.run_dir is None or not (src.run_dir / RECORDS_CSV).is_file() for src in sources)
    if "difficulty" in names and str(sources[0].cfg.analyze.difficulty) == "records" and not explicit and no_records:
        skipped.append("difficulty")  # only PCKD runs record it; asked for by name, the reader explains
    out = output_folder(sources)
    drawn = [name for name in names if name not in skipped]
    # Everything that can be refused (data, networks, the run's records) is read before anything is written.
    session = Session(sources, progress)
    if "difficulty" in drawn and str(session.options.difficulty) == "records":
        session.records = {n: _records_difficulty(session, src) for n, src in enumerate(sources)}
    _create(out)
    result: dict[str, Any] = {"output_dir": str(out), "figures": {}, "skipped": skipped}
    for name in drawn:
        result["figures"].update(DRAWERS[name](session, out))
    return result
