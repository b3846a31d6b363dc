"""Download one file into the cache: progress bar, resume of a partial download (HTTP Range), and an atomic
rename at the end, so the cache never holds half a file under its real name.

Hand-written on urllib rather than a download library: none in the dependencies resumes with Range *and*
reports each failure as the one-line errors pckd gives (and tests need a loopback server, not the internet).
"""

from __future__ import annotations

import errno
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, BinaryIO

from tqdm.auto import tqdm

from pckd.errors import UserError, WriteFailed

CHUNK = 1 << 16
TIMEOUT_S = 30.0


def source_of(base: str, filename: str) -> str:
    """The URL or local path of ``filename`` under a base URL or a local folder."""
    if "://" in base and not base.startswith("file://"):
        return f"{base.rstrip('/')}/{filename}"
    folder = base[len("file://"):] if base.startswith("file://") else base
    return str(Path(folder).expanduser() / filename)


def _write_failed(path: Path, exc: OSError) -> WriteFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        path.unlink(missing_ok=True)
        return WriteFailed(f"cannot write '{path}': the disk is full (partial download removed); free space and "
                           "fetch again")
    return WriteFailed(f"cannot write '{path}' ({exc.strerror}); check the permissions of $PCKD_HOME")


def _copy_local(source: Path, part: Path, progress: bool) -> None:
    if not source.is_file():
        raise UserError(f"'{source}' not found: PCKD_TEACHERS_URL names a folder without it; put the archive "
                        "there or unset PCKD_TEACHERS_URL to use the release")
    with open(source, "rb") as src, open(part, "wb") as dst, \
            tqdm(total=source.stat().st_size, unit="B", unit_scale=True, desc=source.name, disable=not progress,
                 leave=False) as bar:
        for block in iter(lambda: src.read(CHUNK), b""):
            dst.write(block)
            bar.update(len(block))
        dst.flush()
        os.fsync(dst.fileno())


def _fetch_url(url: str, part: Path, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            return
        raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL or set "
                        "PCKD_TEACHERS_URL to a mirror") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach {url} ({reason}); check the network or set PCKD_TEACHERS_URL to a mirror "
                        "or a local folder") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server ignored the Range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        try:
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                         disable=not progress, leave=False) as bar:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
        except (TimeoutError, ConnectionError, urllib.error.URLError) as exc:
            raise UserError(f"download of {url} was interrupted ({exc}); run the same command again to resume "
                            f"({part.stat().st_size if part.exists() else 0} bytes kept)") from None
    if total is not None and part.stat().st_size < total:
        raise UserError(f"download of {url} ended early ({part.stat().st_size} of {total} bytes); run the same "
                        "command again to resume")


def download(source: str, dest: Path, size: int | None = None, progress: bool = True,
             timeout: float = TIMEOUT_S) -> Path:
    """Fetch ``source`` (URL or local path) to ``dest``; a ``.part`` file beside it holds a partial download
    and is resumed by the next call. With ``size`` given, a file of another size is refused and deleted."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        if "://" in source:
            _fetch_url(source, part, progress, timeout)
        else:
            _copy_local(Path(source), part, progress)
    except OSError as exc:
        raise _write_failed(part, exc) from None
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise UserError(f"'{source}' has {got} bytes, the registry expects {size}; the file was deleted: the mirror "
                        "holds another file, or it changed; fetch again or check PCKD_TEACHERS_URL")
    os.replace(part, dest)
    return dest


def place_atomically(data_source: BinaryIO | IO[bytes], dest: Path) -> None:
    """Copy an open binary stream into ``dest`` through a temporary file (fsync + rename)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(data_source, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(dest, exc) from None
