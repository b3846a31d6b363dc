"""Planted CIFAR pickles never run code: the restricted unpickler refuses every global but numpy's array
rebuilders, with one `pckd: error:` line and exit 2."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from pckd.cli import main
from pckd.data.cifar import load_cifar
from pckd.data.safe_pickle import RefusedGlobal, load_data_pickle
from pckd.errors import UserError

BASE = "method: ce\nstudent: {arch: resnet8}\ndata: {name: digits}\ntrain: {epochs: 1, device: cpu, progress: false}\n"


class _Payload:
    """Unpickling this calls ``exec`` on code that creates ``marker``: what a planted data file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant(root: Path, marker: Path, protocol: int = 4) -> Path:
    """A cifar-100-python folder whose train file carries the payload; meta and test are plain."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    plain = {"data": np.zeros((4, 3072), dtype=np.uint8), "fine_labels": [0, 1, 2, 3]}
    (folder / "test").write_bytes(pickle.dumps(plain))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    (folder / "train").write_bytes(pickle.dumps({**plain, "x": _Payload(marker)}, protocol=protocol))
    return folder


@pytest.mark.filterwarnings("ignore:.*not the canonical")
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_planted_payload_is_refused_and_never_runs(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "data", marker, protocol)
    assert not marker.exists()
    with pytest.raises(UserError) as err:
        load_cifar("cifar100", tmp_path / "data", train=True)
    assert "exec" in str(err.value) and "cifar-100-python/train" in str(err.value)  # __builtin__.exec in protocol 2
    assert not marker.exists(), "the payload ran"


def test_planted_payload_through_pckd_train_is_one_line_exit_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "data", marker)
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    code = main(["train", str(config), f"output_dir={tmp_path / 'run'}", "data.name=cifar100",
                 f"data.root={tmp_path / 'data'}"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pckd: error:")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "builtins.exec" in errors[0] and "refused" in errors[0]
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_containers_still_load(protocol: int) -> None:
    data = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072)
    obj = {"data": data, "labels": [1, 2], "batch_label": "b", b"raw": b"\x00\xff", "n": 2.5}
    loaded = load_data_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert np.array_equal(loaded["data"], data) and loaded["labels"] == [1, 2] and loaded[b"raw"] == b"\x00\xff"


@pytest.mark.parametrize("target", [("os", "system"), ("builtins", "eval"), ("numpy", "load"),
                                    ("subprocess", "Popen"), ("torch", "load")])
def test_any_other_global_is_refused(target: tuple[str, str]) -> None:
    module, name = target
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."  # protocol 2: GLOBAL module name
    with pytest.raises(RefusedGlobal, match=f"{module}.{name}"):
        load_data_pickle(io.BytesIO(payload))
