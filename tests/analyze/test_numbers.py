"""The numbers behind the analysis figures, against hand-computed values and naive loops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pckd.analyze.calibration import bin_of, plot_calibration, reliability, softmax_confidence
from pckd.analyze.centres import centre_cosines, centres_numbers, plot_centres, shared_scale
from pckd.analyze.config import FIGURES, parse_figures
from pckd.analyze.correlation import class_mean_logits, correlation_difference, plot_correlation
from pckd.analyze.output import write_json
from pckd.errors import UserError


def test_ece_of_hand_built_predictions():
    # 2 bins: (0, .5] holds conf .3 (wrong), .5 (right); (.5, 1] holds .9 (right), .8 (wrong)
    conf = np.array([0.3, 0.5, 0.9, 0.8])
    correct = np.array([0, 1, 1, 0])
    rel = reliability(conf, correct, bins=2)
    assert rel["count"].tolist() == [2, 2]
    assert rel["accuracy"].tolist() == [0.5, 0.5]
    assert rel["confidence"] == pytest.approx([0.4, 0.85])
    # ECE = 2/4 |0.5 - 0.4| + 2/4 |0.5 - 0.85| = 0.05 + 0.175
    assert rel["ece"] == pytest.approx(0.225)
    assert np.isnan(reliability(np.array([0.95]), np.array([1]), bins=4)["accuracy"][0])


def test_bins_are_right_closed_and_zero_goes_first():
    assert bin_of(np.array([0.0, 0.1, 0.5, 0.50001, 1.0]), 2).tolist() == [0, 0, 0, 1, 1]


def test_softmax_confidence_matches_a_naive_softmax():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(7, 5)) * 3, rng.integers(0, 5, size=7)
    conf, hit = softmax_confidence(z, y)
    for i in range(7):
        p = np.exp(z[i]) / np.exp(z[i]).sum()
        assert conf[i] == pytest.approx(p.max())
        assert hit[i] == (int(np.argmax(p)) == y[i])


def test_correlation_of_a_model_with_itself_is_zero_and_matches_a_loop():
    rng = np.random.default_rng(1)
    z_t, z_s, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), rng.integers(0, 4, size=40)
    assert correlation_difference(z_t, z_t, y, 4)["mean"] == 0.0
    c = class_mean_logits(z_t, y, 4)
    for label in range(4):
        assert c[label] == pytest.approx(z_t[y == label].mean(axis=0))
    out = correlation_difference(z_t, z_s, y, 4)
    naive = np.abs(c - class_mean_logits(z_s, y, 4))
    np.fill_diagonal(naive, 0)
    assert out["mean"] == pytest.approx(naive.mean()) and out["max"] == pytest.approx(naive.max())
    absent = correlation_difference(z_t, z_s, np.zeros(40, dtype=int), 4)
    assert absent["classes_present"] == 1 and absent["mean"] == pytest.approx(np.abs(z_t.mean(0) - z_s.mean(0))[1:].sum() / 4)


def test_centre_cosines_and_scale():
    t = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    s = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    assert centre_cosines(t, s).tolist() == [1.0, -1.0, 0.0]
    assert centre_cosines(t, np.zeros((3, 3))) is None
    assert shared_scale(t, s) == 2.0 and shared_scale(np.zeros((2, 2))) == 1.0


def test_figure_names():
    assert parse_figures(None) == (list(FIGURES), False)
    assert parse_figures("tsne,centres") == (["centres", "tsne"], True)
    with pytest.raises(UserError, match="did you mean 'tsne'"):
        parse_figures("tnse")


def test_plots_and_json_are_written(tmp_path):
    rng = np.random.default_rng(2)
    names = [f"class {k}" for k in range(10)]
    numbers = centres_numbers(rng.normal(size=(10, 64)), rng.normal(size=(10, 64)), list(range(10)), names)
    assert plot_centres(numbers, tmp_path / "centres.png", "centres").stat().st_size > 10_000
    conf, hit = softmax_confidence(rng.normal(size=(500, 10)) * 3, rng.integers(0, 10, size=500))
    rel = reliability(conf, hit, 15)
    assert plot_calibration([("student", rel), ("teacher", rel)], tmp_path / "cal.png", "calibration").is_file()
    corr = correlation_difference(rng.normal(size=(300, 10)), rng.normal(size=(300, 10)), rng.integers(0, 10, 300), 10)
    assert plot_correlation(corr, names, tmp_path / "corr.png", "correlation").is_file()
    back = json.loads(write_json({"ece": rel["ece"], "accuracy": rel["accuracy"]}, tmp_path / "c.json").read_text())
    assert back["ece"] == pytest.approx(rel["ece"], rel=1e-5) and len(back["accuracy"]) == 15
