"""`pckd analyze` end to end on tiny digits runs: the files it writes, its numbers against naive loops over
the networks' own outputs, and one line + exit 2 for each bad input (with nothing written)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from pckd.cli import main
from pckd.data.digits import digits_normalization, load_digits_split
from pckd.models import create_model, load_weights

COMMON = ["data.name=digits", "student.arch=resnet8", "train.device=cpu", "train.epochs=1", "train.batch_size=32",
          "train.progress=false", "data.train_limit=128", "data.test_limit=100"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analyze")
    config = root / "empty.yaml"
    config.write_text("{}\n")
    teacher = root / "teacher"
    assert main(["train", str(config), "method=ce", *COMMON, f"output_dir={teacher}"]) == 0
    student = root / "pckd"
    assert main(["train", str(config), "method=pckd", "teacher.arch=resnet8", f"teacher.checkpoint={teacher / 'best.pt'}",
                 "train.eval_teacher=false", *COMMON, f"output_dir={student}"]) == 0
    return {"teacher": teacher, "pckd": student}


def _network(checkpoint: Path) -> torch.nn.Module:
    model = create_model("resnet8", 10)
    load_weights(model, str(checkpoint))
    return model.eval()


def _test_logits(checkpoint: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the first 100 digits test images, normalised by hand (the analysis' data.test_limit)."""
    images, labels, _ = load_digits_split(train=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in digits_normalization())
    x = (images[:100].double() / 255.0 - mean) / std
    with torch.no_grad():
        return _network(checkpoint)(x.float()).double(), labels[:100]


def _naive_ece(logits: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    total, n = 0.0, len(labels)
    p = torch.softmax(logits, dim=1)
    conf, pred = p.max(dim=1)
    for b in range(1, bins + 1):
        members = [i for i in range(n) if (b - 1) / bins < conf[i] <= b / bins]
        if members:
            acc = sum(int(pred[i] == labels[i]) for i in members) / len(members)
            mean_conf = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / n * abs(acc - mean_conf)
    return total


def _naive_correlation_mean(t: torch.Tensor, s: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    diff_sum, count = 0.0, 0
    for row in range(k):
        members = [i for i in range(len(labels)) if labels[i] == row]
        if not members:
            continue
        for col in range(k):
            if row != col:
                ct = sum(float(t[i, col]) for i in members) / len(members)
                cs = sum(float(s[i, col]) for i in members) / len(members)
                diff_sum += abs(ct - cs)
            count += 1  # the zeroed diagonal counts, as in mdistiller's notebook
    return diff_sum / count


def test_every_figure_of_a_pckd_run_with_numbers_from_naive_loops(runs: dict[str, Path],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(runs["pckd"]), "analyze.tsne_points=60", "analyze.tsne_iterations=250"]) == 0
    result = json.loads(capsys.readouterr().out)
    out = runs["pckd"] / "analysis"
    assert result["output_dir"] == str(out) and result["skipped"] == []
    for name in ("centres", "difficulty", "tsne", "correlation", "calibration"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert isinstance(json.loads((out / f"{name}.json").read_text()), dict)
    t_logits, labels = _test_logits(runs["teacher"] / "best.pt")
    s_logits, _ = _test_logits(runs["pckd"] / "best.pt")
    correlation = json.loads((out / "correlation.json").read_text())
    assert correlation["mean"] == pytest.approx(_naive_correlation_mean(t_logits, s_logits, labels, 10), rel=1e-4)
    calibration = json.loads((out / "calibration.json").read_text())["models"]
    assert calibration["student (resnet8)"]["ece"] == pytest.approx(_naive_ece(s_logits, labels, 15), abs=1e-5)
    assert calibration["teacher (resnet8)"]["ece"] == pytest.approx(_naive_ece(t_logits, labels, 15), abs=1e-5)
    tsne = json.loads((out / "tsne.json").read_text())["models"]["student (resnet8)"]
    assert len(tsne["coordinates"]) == len(tsne["label"]) == 60 and all(len(c) == 2 for c in tsne["coordinates"])
    assert sorted(set(tsne["label"])) == list(range(10))  # 60 points balanced over the 10 classes: 6 each
    assert all(tsne["label"].count(k) == 6 for k in range(10))
    # Fig. 7 from the run's own records: the 8 smallest and 8 largest s_i of preview_records.csv.
    with open(runs["pckd"] / "preview_records.csv", newline="") as fh:
        rows = [(float(r["difficulty"]), int(r["index"])) for r in csv.DictReader(fh)]
    difficulty = json.loads((out / "difficulty.json").read_text())
    assert difficulty["easiest"]["difficulty"] == pytest.approx(sorted(d for d, _ in rows)[:8], rel=1e-5)
    assert difficulty["hardest"]["difficulty"] == pytest.approx(sorted((d for d, _ in rows), reverse=True)[:8],
                                                                 rel=1e-5)
    centres = json.loads((out / "centres.json").read_text())
    w_t = _network(runs["teacher"] / "best.pt").fc.weight.detach().double()
    w_s = _network(runs["pckd"] / "best.pt").fc.weight.detach().double()
    cos = [float(w_t[k] @ w_s[k] / (w_t[k].norm() * w_s[k].norm())) for k in range(10)]
    assert centres["cosine"] == pytest.approx(cos, abs=1e-5)


def test_a_student_against_itself_has_zero_correlation_difference_and_unit_centre_cosine(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    own = runs["pckd"] / "best.pt"
    assert main(["analyze", str(runs["pckd"]), "--figures", "correlation,centres", f"analyze.teacher={own}",
                 "analyze.teacher_arch=resnet8", f"analyze.output_dir={tmp_path / 'self'}"]) == 0
    result = json.loads(capsys.readouterr().out)["figures"]
    assert result["correlation"]["mean"] == 0.0 and result["correlation"]["max"] == 0.0
    assert result["centres"]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_difficulty_under_the_student_has_mean_one_and_sorted_extremes(runs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["analyze", str(runs["teacher"]), "--figures", "difficulty", "analyze.difficulty=student",
                 "analyze.difficulty_count=4", f"analyze.output_dir={tmp_path}"]) == 0
    numbers = json.loads((tmp_path / "difficulty.json").read_text())
    assert numbers["samples"] == 128 and math.isclose(numbers["mean"], 1.0, rel_tol=1e-6)
    easy, hard = numbers["easiest"]["difficulty"], numbers["hardest"]["difficulty"]
    assert len(easy) == len(hard) == 4 and easy == sorted(easy) and hard == sorted(hard, reverse=True)
    assert max(easy) <= min(hard)


def test_several_runs_side_by_side_and_a_bare_checkpoint_with_its_arch(runs: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(runs["teacher"]), str(runs["pckd"]), "--figures", "calibration",
                 f"analyze.output_dir={tmp_path / 'both'}"]) == 0
    ece = json.loads(capsys.readouterr().out)["figures"]["calibration"]["ece"]
    assert set(ece) == {"teacher (resnet8)", "pckd (resnet8)"}  # the first run (ce) has no teacher panel
    bare = tmp_path / "weights.pt"
    torch.save(_network(runs["pckd"] / "best.pt").state_dict(), bare)
    assert main(["analyze", str(bare), "student.arch=resnet8", *COMMON[:1], "data.test_limit=100",
                 "--figures", "calibration", f"analyze.output_dir={tmp_path / 'bare'}"]) == 0
    s_logits, labels = _test_logits(bare)
    got = json.loads((tmp_path / "bare" / "calibration.json").read_text())["models"]["student (resnet8)"]["ece"]
    assert got == pytest.approx(_naive_ece(s_logits, labels, 15), abs=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (["--figures", "difficulty"], "preview_records.csv' not found"),
    (["--figures", "tsen"], "unknown figure 'tsen'; did you mean 'tsne'"),
    (["--figures", "correlation"], "compares the student with its teacher"),
    (["analyze.classes=[3,12]"], "names class 12 but the data has 10 classes"),
])
def test_bad_input_of_a_teacherless_run_is_one_line_and_exit_2(runs: dict[str, Path], args: list[str], message: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = runs["teacher"]  # a ce run: no teacher and no preview records
    assert main(["analyze", str(target), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pckd: error:") and message in err[0]
    assert not (target / "analysis").exists()  # refused before anything was written


def test_a_checkpoint_without_its_architecture_and_an_output_that_is_a_file(runs: dict[str, Path], tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "weights.pt"
    torch.save(_network(runs["pckd"] / "best.pt").state_dict(), bare)
    assert main(["analyze", str(bare)]) == 2
    assert "add student.arch=NAME" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    assert main(["analyze", str(runs["pckd"]), f"analyze.output_dir={taken}"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine\n"
    assert main(["analyze", str(tmp_path / "nowhere")]) == 2
    assert "neither a run folder nor a checkpoint" in capsys.readouterr().err
