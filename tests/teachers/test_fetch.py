"""`pckd teachers` against a loopback HTTP server serving an archive laid out like mdistiller's
`cifar_teachers.tar`, of files written the way RepDistiller's train_teacher.py writes them (never the internet)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

import pckd.teachers.download as transfer
from pckd.cli import main
from pckd.models import create_model, read_checkpoint
from pckd.models.published import registry

from ..conftest import SMALL_TEACHERS as KEPT  # the small_registry fixture drops the other teachers


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/pckd-teacher-payload-ran",))


def _teacher_bytes(arch: str, malicious: bool = False) -> bytes:
    """A RepDistiller teacher file: epoch, model, accuracy (a tensor), optimizer state, the options."""
    torch.manual_seed(0)
    model = create_model(arch, 100)
    opt = argparse.Namespace(model=arch, learning_rate=0.05, lr_decay_epochs=[150, 180, 210], epochs=240)
    if malicious:
        opt.hook = Payload()
    buf = io.BytesIO()
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(72.5), "opt": opt,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005}]}}, buf)
    return buf.getvalue()


def _archive(malicious: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arch in KEPT:
            data = _teacher_bytes(arch, malicious == arch)
            info = tarfile.TarInfo(f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """Serves /cifar_teachers.tar with Range support; ``mode`` makes it fail in one way."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.mode, self.requests = payload, "ok", []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(dict(self.headers))
                if self.path != "/cifar_teachers.tar" or outer.mode == "404":
                    self.send_error(404, "Not Found")
                    return
                if outer.mode == "slow":
                    time.sleep(2.0)
                data, start = outer.payload, 0
                if outer.mode == "truncated_file":
                    data = data[: len(data) // 10]  # inside the first teacher's file
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.mode == "drop":  # the connection dies half-way (then the mode heals)
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    outer.mode = "ok"
                    self.close_connection = True
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def archive_bytes() -> bytes:
    return _archive()


@pytest.fixture
def server(archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           small_registry: None) -> Iterator[Server]:
    srv = Server(archive_bytes)
    monkeypatch.setenv("PCKD_TEACHERS_URL", srv.url)
    monkeypatch.setenv("PCKD_HOME", str(tmp_path / "home"))
    yield srv
    srv.close()


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pckd: error:"), lines
    return lines[0]


def _cache_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "home" / "teachers"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_fetch_all_caches_whole_files_with_their_hashes_and_zoo_paths_load(
        server: Server, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teachers", "fetch", "all", "--data-root", str(tmp_path / "no-data")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(KEPT) and all(r["fetched"] for r in rows)
    hashes = json.loads((tmp_path / "home" / "teachers" / "sha256.json").read_text())
    for arch in KEPT:
        file = tmp_path / "home" / "teachers" / f"{arch}.pth"
        assert hashes[arch] == hashlib.sha256(file.read_bytes()).hexdigest()
        state = read_checkpoint(f"zoo:{arch}")  # no trust flag: the Namespace and the tensor accuracy are allowed
        assert state["opt"].model == arch and state["epoch"] == 240
    assert _cache_files(tmp_path) == ["resnet56.pth", "sha256.json", "wrn_40_2.pth"]  # no temp file left
    assert main(["teachers", "path", "resnet56"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "home" / "teachers" / "resnet56.pth")
    count = len(server.requests)
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path / "no-data")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["fetched"] is False and len(server.requests) == count
    # A zoo path is read like any checkpoint path (here by `pckd eval`, on CIFAR-100).
    assert main(["eval", "zoo:resnet56", "student.arch=resnet56", f"data.root={shared_data}", "data.test_limit=32",
                 "train.device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 32


def test_an_interrupted_download_resumes_with_a_range_request(server: Server, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    server.mode = "drop"
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 2
    assert "run the same command again to resume" in _one_error(capsys)
    part = tmp_path / "home" / "downloads" / "cifar_teachers.tar.part"
    assert 0 < part.stat().st_size < len(server.payload) and _cache_files(tmp_path) == []
    kept = part.stat().st_size
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 0
    assert server.requests[-1].get("Range") == f"bytes={kept}-"
    assert not part.exists() and (tmp_path / "home" / "downloads" / "cifar_teachers.tar").read_bytes() == server.payload


@pytest.mark.parametrize(("mode", "message"), [
    ("404", "HTTP 404"),
    ("truncated_file", "truncated or damaged"),
])
def test_a_missing_or_truncated_archive_is_one_line_and_leaves_no_teacher(
        server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, message: str) -> None:
    server.mode = mode
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 2
    assert message in _one_error(capsys)
    assert _cache_files(tmp_path) == []
    assert not (tmp_path / "home" / "downloads" / "cifar_teachers.tar").exists()


def test_a_timeout_is_one_line(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "TIMEOUT_S", 0.3)
    server.mode = "slow"
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 2
    assert "timed out" in _one_error(capsys) and _cache_files(tmp_path) == []


@pytest.mark.parametrize("field", ["size", "sha256"])
def test_a_teacher_of_the_wrong_size_or_hash_is_removed(server: Server, tmp_path: Path, field: str,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    wrong = dataclasses.replace(registry.TEACHERS["resnet56"], **{field: 1 if field == "size" else "0" * 64})
    monkeypatch.setitem(registry.TEACHERS, "resnet56", wrong)
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 2
    assert ("registry expects 1" if field == "size" else "SHA-256") in _one_error(capsys)
    assert "resnet56.pth" not in _cache_files(tmp_path) and "sha256.json" not in _cache_files(tmp_path)


def test_a_full_disk_is_exit_1_naming_the_file_with_no_partial_file(
        server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    class Full(io.RawIOBase):
        def __init__(self, path: Any, mode: str) -> None:
            self.inner = real_open(path, mode)

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            return self.inner.fileno()

        def close(self) -> None:
            self.inner.close()
            super().close()

    monkeypatch.setattr(transfer, "open", lambda path, mode="r", *a, **k: Full(path, mode), raising=False)
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 1
    line = _one_error(capsys)
    assert "disk is full" in line and "cifar_teachers.tar.part" in line
    assert not (tmp_path / "home" / "downloads" / "cifar_teachers.tar.part").exists()


def test_a_malicious_teacher_in_the_archive_is_refused_and_never_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        small_registry: None) -> None:
    marker = Path("/tmp/pckd-teacher-payload-ran")
    marker.unlink(missing_ok=True)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar_teachers.tar").write_bytes(_archive(malicious="resnet56"))
    monkeypatch.setenv("PCKD_TEACHERS_URL", str(mirror))  # a local folder works as a mirror
    monkeypatch.setenv("PCKD_HOME", str(tmp_path / "home"))
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 2
    assert "NOT loaded or executed" in _one_error(capsys)
    assert not marker.exists() and "resnet56.pth" not in _cache_files(tmp_path)
    assert main(["teachers", "fetch", "wrn_40_2", "--data-root", str(tmp_path)]) == 0  # the clean one loads
    capsys.readouterr()


def test_zoo_paths_name_the_fetch_command_and_notice_a_changed_file(
        server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "zoo:resnet56", "student.arch=resnet56"]) == 2
    assert "run 'pckd teachers fetch resnet56'" in _one_error(capsys)
    assert main(["eval", "zoo:resnet1000", "student.arch=resnet56"]) == 2
    assert "no published teacher 'resnet1000'" in _one_error(capsys)
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(tmp_path)]) == 0
    capsys.readouterr()
    file = tmp_path / "home" / "teachers" / "resnet56.pth"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed inside the tensor data
    file.write_bytes(bytes(data))
    assert main(["eval", "zoo:resnet56", "student.arch=resnet56"]) == 2
    assert "changed since it was fetched" in _one_error(capsys)


def test_after_a_fetch_the_teacher_is_evaluated_against_its_published_accuracy(
        server: Server, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teachers", "fetch", "resnet56", "--data-root", str(shared_data), "--test-limit", "64"]) == 0
    captured = capsys.readouterr()
    # Random weights: far from the published 72.34%, so the check warns.
    assert "pckd: warning: teacher resnet56: top-1" in captured.err and "vs 72.34% published" in captured.err
    row = json.loads(captured.out)[0]
    assert row["evaluation"]["n"] == 64 and row["evaluation"]["published_top1"] == 72.34
    assert row["evaluation"]["difference"] == pytest.approx(row["evaluation"]["top1"] - 72.34)
