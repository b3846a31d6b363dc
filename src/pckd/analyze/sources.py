"""What ``pckd analyze`` looks at: each argument (a run folder or a checkpoint) resolved to its student
checkpoint, its config, and the teacher it was distilled from (if any)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pckd import run_folder
from pckd.analyze.config import SECTION, AnalyzeConfig
from pckd.config import load_config
from pckd.config.load import uses_teacher
from pckd.engine.checkpoint_config import load_checkpoint_config
from pckd.errors import UserError

SECTIONS: dict[str, type] = {SECTION: AnalyzeConfig}


@dataclass
class Source:
    """One analysed student. ``name`` labels it in the figures; ``teacher`` is a ``ModelConfig`` (None when the
    run had no teacher and ``analyze.teacher`` is unset); ``run_dir`` is None for a bare checkpoint."""

    name: str
    checkpoint: Path
    run_dir: Path | None
    cfg: Any
    teacher: Any | None


def _checkpoint_of(path: Path, choice: str) -> tuple[Path, Path | None]:
    """(checkpoint, run folder) of an argument; UserError when neither a file nor a run folder."""
    if path.is_file():
        return path, (path.parent if (path.parent / run_folder.CONFIG).is_file() else None)
    if not path.is_dir():
        raise UserError(f"'{path}' is neither a run folder nor a checkpoint file; give a folder written by "
                        "'pckd train' or a .pt/.safetensors file")
    name = run_folder.BEST if choice == "best" else run_folder.LAST
    found = path / name
    if not found.is_file():
        other = "last" if choice == "best" else "best"
        raise UserError(f"run folder '{path}' holds no {name} (training has not saved one yet); finish or resume "
                        f"the run, or set analyze.checkpoint={other}")
    return found, path


def _stored_teacher(stored: dict[str, Any] | None, where: Path) -> Any | None:
    """The teacher a run distilled from, from the config it stored (None when its method used none)."""
    if not stored:
        return None
    try:
        cfg = load_config(None, [], base=stored)
    except UserError as exc:
        raise UserError(f"the config stored in '{where}' no longer resolves ({exc}); name the teacher with "
                        "analyze.teacher=PATH analyze.teacher_arch=ARCH") from None
    return cfg.teacher if uses_teacher(cfg) else None


def _teacher(stored_teacher: Any | None, options: AnalyzeConfig, fallback: Any) -> Any | None:
    """The teacher's ModelConfig: ``analyze.teacher``/``analyze.teacher_arch`` over the run's own."""
    if options.teacher is None:
        if stored_teacher is not None and stored_teacher.checkpoint and not Path(stored_teacher.checkpoint).is_file():
            raise UserError(f"the run's teacher.checkpoint='{stored_teacher.checkpoint}' is not found from here; "
                            "give it with analyze.teacher=PATH")
        return stored_teacher
    arch = options.teacher_arch or (stored_teacher.arch if stored_teacher is not None else None)
    if arch is None:
        raise UserError(f"analyze.teacher={options.teacher} needs its architecture: add analyze.teacher_arch=NAME "
                        "(see 'pckd models')")
    base = stored_teacher if stored_teacher is not None else fallback
    return dataclasses.replace(base, arch=arch, checkpoint=options.teacher, weights=None, reset_classifier=False)


def resolve_sources(inputs: list[str], overrides: list[str]) -> list[Source]:
    """Each argument as a :class:`Source`; the overrides (``analyze.*``, ``data.*``, ``train.*``,
    ``student.arch`` for foreign checkpoints) apply to every one."""
    if not inputs:
        raise UserError("pckd analyze needs at least one run folder or checkpoint")
    options = load_config(None, overrides, base={"method": "ce"}, sections=SECTIONS).analyze
    sources: list[Source] = []
    for text in inputs:
        checkpoint, run_dir = _checkpoint_of(Path(text), str(options.checkpoint))
        loaded = load_checkpoint_config(checkpoint, overrides, sections=SECTIONS)
        teacher = _teacher(_stored_teacher(loaded.stored, checkpoint), options, loaded.cfg.teacher)
        name = run_dir.name if run_dir is not None and checkpoint.parent == run_dir else checkpoint.stem
        sources.append(Source(name, checkpoint, run_dir, loaded.cfg, teacher))
    first = sources[0].cfg.data
    for source in sources[1:]:
        if (source.cfg.data.name, source.cfg.data.classes) != (first.name, first.classes):
            raise UserError(f"'{source.checkpoint}' was trained on data.name={source.cfg.data.name} "
                            f"data.classes={source.cfg.data.classes}, the first on data.name={first.name} "
                            f"data.classes={first.classes}; analyse runs of one dataset together")
    return sources
