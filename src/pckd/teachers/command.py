"""``pckd teachers list | fetch NAME... | fetch all | path NAME``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pckd.errors import PckdWarning, UserError
from pckd.models.published import cache
from pckd.models.published.registry import TEACHERS
from pckd.teachers.fetch import Fetched, fetch

TOLERANCE = 0.5  # points of top-1 between a fetched teacher and its published accuracy before a warning


def list_rows() -> list[dict[str, Any]]:
    """One row per registry entry, with its cache state."""
    hashes = cache.recorded_hashes()
    rows = []
    for name, t in TEACHERS.items():
        if t.archive is None:
            state = f"torchvision weights {t.weights} (downloaded by torchvision on first use)"
        elif cache.teacher_file(name).is_file():
            state = f"cached, sha256 {hashes.get(name, 'not recorded')[:12]}"
        else:
            state = "not fetched"
        rows.append({"name": name, "arch": t.arch, "dataset": t.dataset, "top1": t.top1, "source": t.source,
                     "state": state})
    return rows


def list_table() -> str:
    lines = ["| name | arch | dataset | published top-1 (%) | state |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['arch']} | {r['dataset']} | {r['top1']:.2f} | {r['state']} |" for r in list_rows()]
    return "\n".join(lines) + f"\n\ncache: {cache.teachers_dir()} (set $PCKD_HOME to move it)"


def path_of(name: str) -> Path:
    """The cached file of ``name`` (verified), for scripts: ``teacher.checkpoint=$(pckd teachers path X)``."""
    return cache.resolve(f"{cache.PREFIX}{name}", key_name="")


def _evaluate(done: Fetched, data_root: Path, test_limit: int | None) -> dict[str, Any]:
    from pckd.engine.eval_checkpoint import evaluate_checkpoint

    overrides = [f"student.arch={done.teacher.arch}", "data.name=cifar100", f"data.root={data_root}",
                 "train.progress=false"] + ([f"data.test_limit={test_limit}"] if test_limit else [])
    result = evaluate_checkpoint(str(done.path), overrides)
    gap = result["top1"] - done.teacher.top1
    if abs(gap) > TOLERANCE:
        limited = f" on the first {test_limit} test images" if test_limit else ""
        warnings.warn(f"teacher {done.teacher.name}: top-1 {result['top1']:.2f}%{limited} of '{data_root}' vs "
                      f"{done.teacher.top1:.2f}% published ({gap:+.2f} points); a different test split or a "
                      "damaged file", PckdWarning, stacklevel=2)
    return {"top1": result["top1"], "published_top1": done.teacher.top1, "difference": gap, "n": result["n"]}


def fetch_command(names: list[str], force: bool, data_root: str | None, test_limit: int | None,
                  progress: bool) -> list[dict[str, Any]]:
    """Fetch, then (when ``data_root`` holds CIFAR-100) evaluate each teacher against its published top-1."""
    if not names:
        raise UserError("pckd teachers fetch needs teacher names or 'all' (see 'pckd teachers list')")
    done = fetch(names, force=force, progress=progress)
    root = Path(data_root).expanduser() if data_root else None
    can_evaluate = root is not None and (root / "cifar-100-python").is_dir()
    out = []
    for item in done:
        row: dict[str, Any] = {"name": item.teacher.name, "path": str(item.path), "sha256": item.sha256,
                               "fetched": item.fetched}
        if can_evaluate and root is not None:
            row["evaluation"] = _evaluate(item, root, test_limit)
        out.append(row)
    return out
