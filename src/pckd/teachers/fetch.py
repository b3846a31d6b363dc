"""Fetch published CIFAR teachers into the cache: download the release archive once (resumable), take each
teacher's file out of it atomically, check that it loads into its pckd architecture, and record its SHA-256."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pckd.errors import UserError
from pckd.models import create_model, load_weights
from pckd.models.published import cache
from pckd.models.published.registry import RELEASE_URL, TEACHERS, URL_VARIABLE, PublishedTeacher
from pckd.teachers import download as transfer
from pckd.teachers.download import place_atomically, source_of


@dataclass
class Fetched:
    """One teacher in the cache: ``fetched`` is False when it was there already (and its hash still held)."""

    teacher: PublishedTeacher
    path: Path
    sha256: str
    fetched: bool


def archive_teachers() -> list[str]:
    """The names ``fetch all`` covers: every teacher that comes from a release archive."""
    return [name for name, t in TEACHERS.items() if t.archive is not None]


def expand(names: list[str]) -> list[PublishedTeacher]:
    """Registry entries of ``names`` ('all' = every archive teacher); UserError for an unknown name."""
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += archive_teachers()
        elif name in TEACHERS:
            chosen.append(name)
        else:
            raise UserError(f"no published teacher '{name}'; known: {', '.join(TEACHERS)} (or 'all')")
    return [TEACHERS[n] for n in dict.fromkeys(chosen)]


def _cached_ok(teacher: PublishedTeacher) -> str | None:
    """The recorded hash when the cached file is present and still matches it."""
    file = cache.teacher_file(teacher.name)
    expected = cache.recorded_hashes().get(teacher.name)
    if file.is_file() and expected is not None and cache.sha256_of(file) == expected:
        return expected
    return None


def _archive(name: str, progress: bool) -> Path:
    base = os.environ.get(URL_VARIABLE) or RELEASE_URL
    target = cache.downloads_dir() / name
    if target.is_file():
        return target  # complete from an earlier fetch (partial downloads live in a .part file)
    return transfer.download(source_of(base, name), target, progress=progress, timeout=transfer.TIMEOUT_S)


def _extract(archive: Path, teacher: PublishedTeacher) -> Path:
    dest = cache.teacher_file(teacher.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            stream = tar.extractfile(tar.getmember(str(teacher.member)))
            if stream is None:
                raise KeyError(teacher.member)
            place_atomically(stream, dest)
    except KeyError:
        raise UserError(f"'{archive}' holds no '{teacher.member}'; it is not the published archive (delete it "
                        "and fetch again, or check PCKD_TEACHERS_URL)") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        archive.unlink(missing_ok=True)
        dest.with_name(f".{dest.name}.tmp").unlink(missing_ok=True)
        raise UserError(f"'{archive}' is truncated or damaged ({exc}); it was deleted: fetch again") from None
    return dest


def _check_loads(teacher: PublishedTeacher, path: Path) -> None:
    """The file must load, strictly and without the trust flag, into its architecture with 100 classes."""
    try:
        load_weights(create_model(teacher.arch, 100), str(path), key_name=f"zoo:{teacher.name}")
    except UserError as exc:
        path.unlink(missing_ok=True)
        raise UserError(f"the fetched teacher {teacher.name} does not load into {teacher.arch} ({exc}); it was "
                        "removed from the cache") from None


def fetch(names: list[str], force: bool = False, progress: bool = True) -> list[Fetched]:
    """Put the named archive teachers in the cache; teachers already there (hash unchanged) are kept unless
    ``force``. ImageNet teachers are torchvision's and fetched by it on first use (UserError here)."""
    teachers = expand(names)
    web = [t.name for t in teachers if t.archive is None]
    if web:
        raise UserError(f"{', '.join(web)}: torchvision downloads these itself on first use "
                        f"(teacher.weights={TEACHERS[web[0]].weights}); fetch only takes {', '.join(archive_teachers())}")
    done: list[Fetched] = []
    for teacher in teachers:
        known = None if force else _cached_ok(teacher)
        if known is not None:
            done.append(Fetched(teacher, cache.teacher_file(teacher.name), known, False))
            continue
        path = _extract(_archive(str(teacher.archive), progress), teacher)
        if teacher.size is not None and path.stat().st_size != teacher.size:
            got = path.stat().st_size
            path.unlink()
            raise UserError(f"the fetched {teacher.name} has {got} bytes, the registry expects {teacher.size}; it was "
                            "removed: the archive is not the published one")
        digest = cache.sha256_of(path)
        if teacher.sha256 is not None and digest != teacher.sha256:
            path.unlink()
            raise UserError(f"the fetched {teacher.name} has SHA-256 {digest[:12]}..., the registry expects "
                            f"{teacher.sha256[:12]}...; it was removed: the archive is not the published one")
        _check_loads(teacher, path)
        cache.record_hash(teacher.name, digest)
        done.append(Fetched(teacher, path, digest, True))
    return done
