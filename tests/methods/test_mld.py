"""`mld` against naive loops written from the released ``KD_ours.py``: per-sample KL loops, class / batch
correlation matrices entry by entry, ``np.percentile`` masks, for the released computation (quirks included)
and for ``mld.corrected``; hand values; the distiller's step (two views, gradients, the teacher untouched)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from pckd.config import load_config
from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.mld import (
    MLD,
    MLDParams,
    batch_correlation_gap,
    class_correlation_gap,
    confidence_masks,
    mld_terms,
)
from pckd.models import create_model
from tests.methods.scaffold import assert_grads_reach, assert_teacher_untouched, teacher_snapshot

TEMPS = [4.0, 3.0, 5.0, 2.0, 6.0]


def _softmax(row: list[float], T: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    return [v / sum(e) for v in e]


def _kd_rows(s: Tensor, t: Tensor, T: float) -> list[float]:
    """T^2 * sum_k p_t log(p_t / p_s) for each row, by loops."""
    out = []
    for si, ti in zip(s.tolist(), t.tolist()):
        ps, pt = _softmax(si, T), _softmax(ti, T)
        out.append(T * T * sum(b * math.log(b / a) for a, b in zip(ps, pt)))
    return out


def _gram(p: list[list[float]], classes: bool) -> list[list[float]]:
    """sum_b p[b][i] p[b][j] (classes) or sum_k p[a][k] p[b][k] (samples), by loops."""
    if classes:
        k = len(p[0])
        return [[sum(row[i] * row[j] for row in p) for j in range(k)] for i in range(k)]
    return [[sum(x * y for x, y in zip(a, b)) for b in p] for a in p]


def _gap(s: Tensor, t: Tensor, T: float, classes: bool) -> list[list[float]]:
    ps = [_softmax(r, T) for r in s.tolist()]
    pt = [_softmax(r, T) for r in t.tolist()]
    gs, gt = _gram(ps, classes), _gram(pt, classes)
    norm = len(ps[0]) if classes else len(ps)
    return [[(b - a) ** 2 / norm for a, b in zip(ra, rb)] for ra, rb in zip(gs, gt)]


def _masks(t: Tensor) -> tuple[list[bool], list[bool]]:
    p = torch.softmax(t, dim=1).numpy()
    conf, cls = p.max(axis=1), p.sum(axis=0)
    return list(conf <= np.percentile(conf, 50)), list(cls <= np.percentile(cls, 50))


def _naive(sw: Tensor, ss: Tensor, tw: Tensor, ts: Tensor, corrected: bool) -> dict[str, float]:
    """The five (seven) terms the way KD_ours.forward_train adds them up, with plain Python loops."""
    m, c = _masks(tw)
    b, k = sw.shape
    mm, cm = sum(m) / b, sum(c) / k
    out = dict.fromkeys(("kd_weak", "kd_strong", "cc_weak", "bc_weak", "cc_strong", "bc_strong"), 0.0)
    for idx, T in enumerate(TEMPS):
        kd_w = _kd_rows(sw, tw, T)
        cc_w, bc_w = _gap(sw, tw, T, True), _gap(sw, tw, T, False)
        if not corrected:
            out["kd_weak"] += sum(kd_w) / b * mm
            use_weak = idx >= 3  # the released strong sum at T 2 and 6 passes the weak logits
            kd_s = _kd_rows(sw, tw, T) if use_weak else _kd_rows(ss, ts, T)
            out["kd_strong"] += sum(kd_s) / b
            out["cc_weak"] += sum(map(sum, cc_w)) * cm
            out["bc_weak"] += sum(map(sum, bc_w)) * mm
        else:
            out["kd_weak"] += sum(v for v, keep in zip(kd_w, m) if keep) / b
            out["kd_strong"] += sum(_kd_rows(ss, ts, T)) / b
            out["cc_weak"] += sum(row[j] for row in cc_w for j in range(k) if c[j])
            out["bc_weak"] += sum(row[j] for row in bc_w for j in range(b) if m[j])
            out["cc_strong"] += sum(map(sum, _gap(ss, ts, T, True)))
            out["bc_strong"] += sum(row[j] for row in _gap(ss, ts, T, False) for j in range(b) if m[j])
    return out


def _logits(seed: int, b: int = 7, k: int = 5) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, k, generator=g, dtype=torch.float64) * 3 for _ in range(4)]


@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_terms_equal_naive_loops(corrected: bool, seed: int) -> None:
    sw, ss, tw, ts = _logits(seed, b=7 + seed, k=5)  # odd and even batch sizes (median interpolation)
    labels = torch.arange(sw.shape[0]) % 5
    got = mld_terms(sw, ss, tw, ts, labels, TEMPS, corrected=corrected)
    want = _naive(sw, ss, tw, ts, corrected)
    for name in ("kd_weak", "kd_strong", "cc_weak", "bc_weak"):
        assert getattr(got, name).item() == pytest.approx(want[name], rel=1e-10, abs=1e-12), name
    if corrected:
        assert got.cc_strong is not None and got.bc_strong is not None
        assert got.cc_strong.item() == pytest.approx(want["cc_strong"], rel=1e-10)
        assert got.bc_strong.item() == pytest.approx(want["bc_strong"], rel=1e-10)
    else:
        assert got.cc_strong is None and got.bc_strong is None  # computed and dropped by the released code
    ce = sum(-math.log(_softmax(r, 1.0)[y]) for x in (sw, ss) for r, y in zip(x.tolist(), labels.tolist()))
    assert got.ce.item() == pytest.approx(ce / sw.shape[0], rel=1e-10)


def test_released_mask_only_rescales_kd() -> None:
    # Released: kd_loss returns the batch mean, so (mean * mask).mean() = mean * fraction kept, whoever is kept.
    sw, ss, tw, ts = _logits(3, b=8, k=4)
    labels = torch.zeros(8, dtype=torch.long)
    got = mld_terms(sw, ss, tw, ts, labels, [4.0, 3.0, 5.0, 2.0, 6.0])
    m, _ = confidence_masks(tw, 50.0)
    assert m.sum() == 4  # 8 distinct confidences: the interpolated median keeps exactly half
    full = sum(sum(_kd_rows(sw, tw, T)) / 8 for T in TEMPS)
    assert got.kd_weak.item() == pytest.approx(0.5 * full, rel=1e-10)


def test_strong_terms_at_2_and_6_use_the_weak_view_unless_corrected() -> None:
    sw, ss, tw, ts = _logits(4)
    labels = torch.zeros(7, dtype=torch.long)
    # two temperatures only: the released strong sum takes both from the weak logits
    released = mld_terms(sw, ss, tw, ts, labels, [2.0, 6.0])
    weak_only = sum(sum(_kd_rows(sw, tw, T)) / 7 for T in (2.0, 6.0))
    assert released.kd_strong.item() == pytest.approx(weak_only, rel=1e-10)
    fixed = mld_terms(sw, ss, tw, ts, labels, [2.0, 6.0], corrected=True)
    assert fixed.kd_strong.item() == pytest.approx(sum(sum(_kd_rows(ss, ts, T)) / 7 for T in (2.0, 6.0)), rel=1e-10)


def test_hand_values() -> None:
    # One sample, two classes, teacher = student: every gap is 0; the student's CE is -log(1/2) on each view.
    z = torch.zeros(1, 2, dtype=torch.float64)
    terms = mld_terms(z, z, z, z, torch.tensor([0]), TEMPS)
    assert terms.kd_weak.item() == 0 and terms.cc_weak.item() == 0 and terms.bc_weak.item() == 0
    assert terms.ce.item() == pytest.approx(2 * math.log(2))
    # bc at T = 1, two samples, teacher one-hot rows (1,0), (0,1) vs a uniform student:
    # P_t P_t^T = I, P_s P_s^T = all 1/2, gap = sum (I - 1/2)^2 / B = 4 * 1/4 / 2 = 0.5
    big = 1e4
    t = torch.tensor([[big, 0.0], [0.0, big]], dtype=torch.float64)
    s = torch.zeros(2, 2, dtype=torch.float64)
    assert batch_correlation_gap(s, t, 1.0).sum().item() == pytest.approx(0.5)
    # cc: P_t^T P_t = I, P_s^T P_s = all 1/2 (two rows of 1/2): gap = 4 * 1/4 / K = 0.5
    assert class_correlation_gap(s, t, 1.0).sum().item() == pytest.approx(0.5)


def test_masks_keep_the_less_confident_half() -> None:
    t = torch.tensor([[5.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [0.0, 0, 0]])
    m, c = confidence_masks(t, 50.0)
    assert m.tolist() == [False, True, False, True]  # conf <= median: the low-confidence samples
    assert c.tolist() == [False, True, True]  # class 0 carries most of the mass


def test_logit_standardize_changes_only_the_kd_terms() -> None:
    from pckd.methods.standardize import standardize

    sw, ss, tw, ts = _logits(5)
    labels = torch.zeros(7, dtype=torch.long)
    on = mld_terms(sw, ss, tw, ts, labels, TEMPS, standardize=True)
    off = mld_terms(standardize(sw), standardize(ss), standardize(tw), standardize(ts), labels, TEMPS)
    plain = mld_terms(sw, ss, tw, ts, labels, TEMPS)
    assert on.kd_weak.item() == pytest.approx(off.kd_weak.item(), rel=1e-9)  # masks: same teacher ranking
    assert on.kd_strong.item() == pytest.approx(off.kd_strong.item(), rel=1e-9)
    assert on.cc_weak.item() == pytest.approx(plain.cc_weak.item(), rel=1e-12)  # cc/bc see the raw logits
    assert on.bc_weak.item() == pytest.approx(plain.bc_weak.item(), rel=1e-12)


class _TwoViews:
    """Augmenter stand-in: standard = images / 255, strong = the flipped images / 255 (deterministic)."""

    def standard(self, images: Tensor) -> Tensor:
        return images.float() / 255

    def strong(self, images: Tensor) -> Tensor:
        return images.flip(3).float() / 255


def _step(params: MLDParams) -> tuple[MLD, dict[str, Tensor], Batch]:
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet8", 10)
    g = torch.Generator().manual_seed(1)
    batch = Batch(images=torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g),
                  labels=torch.randint(0, 10, (8,), generator=g), index=torch.arange(8), augment=_TwoViews())
    model = MLD(student, teacher, params, DataInfo(num_classes=10, train_size=8, input_size=16))
    snap = teacher_snapshot(teacher)
    out = model(batch, 1)
    out.total.backward()
    assert_teacher_untouched(teacher, snap)
    return model, out.losses, batch


@pytest.mark.parametrize("corrected", [False, True])
def test_distiller_step_weights_the_terms(corrected: bool) -> None:
    p = MLDParams(corrected=corrected)
    model, losses, batch = _step(p)
    assert_grads_reach(model.student, nonzero=True, finite=True)
    expected = {"ce", "kd_weak", "kd_strong", "cc", "bc"} | ({"cc_strong", "bc_strong"} if corrected else set())
    assert set(losses) == expected
    # the wiring: ce_weight on CE, kd_weight on every other term, both views through the student separately
    # (train mode again: BatchNorm uses each view's batch statistics, as in the step)
    with torch.no_grad():
        x_w, x_s = batch.augment.standard(batch.images), batch.augment.strong(batch.images)
        terms = mld_terms(model.student(x_w), model.student(x_s), model.teacher(x_w), model.teacher(x_s),
                          batch.labels, p.temperatures, corrected=corrected)
    assert losses["ce"].item() == pytest.approx(0.1 * terms.ce.item(), rel=1e-6)
    pairs = [("kd_weak", terms.kd_weak), ("kd_strong", terms.kd_strong), ("cc", terms.cc_weak), ("bc", terms.bc_weak)]
    if corrected:
        assert terms.cc_strong is not None and terms.bc_strong is not None
        pairs += [("cc_strong", terms.cc_strong), ("bc_strong", terms.bc_strong)]
    for name, value in pairs:
        assert losses[name].item() == pytest.approx(0.9 * value.item(), rel=1e-6), name


def test_params_from_config_and_bad_input() -> None:
    cfg = load_config(None, ["method=mld", "mld.corrected=true", "mld.temperature=1"])
    assert cfg.mld.corrected is True and cfg.mld.temperatures == [1.0, 3.0, 5.0, 2.0, 6.0]
    with pytest.raises(UserError, match="mld.extra_temperatures"):
        load_config(None, ["method=mld", "mld.extra_temperatures=[3.0]"])
    with pytest.raises(UserError, match="mld.percentile"):
        load_config(None, ["method=mld", "mld.percentile=101"])
