"""Sample-wise contrastive KD (`ckd`; Zhu et al. 2024, arXiv 2404.14109): InfoNCE between teacher and
student logits of the same sample, with the other samples of the batch as negatives.

The default reproduces the released code (docs/methods/ckd.md): both logit vectors are L2-normalised over the
classes, ``S = t_hat @ s_hat^T / tau`` (teacher rows), and the loss is the cross-entropy of each row with its
diagonal entry as the target. Two options exist for ablations (docs/defaults.md "CKD defaults"):

* ``symmetric=True``: average with the loss obtained by exchanging the roles of teacher and student
  (for the default negatives that is the cross-entropy of ``S^T``, i.e. student-anchored rows);
* ``negatives="student_student"``: the positive stays ``<t_i, s_i>`` while the negatives are ``<s_i, s_j>``.

No KL/KD term: the released code trains with CE + contrast only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.distributed import all_gather_rows, is_distributed
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import no_autocast
from pckd.methods.standardize import standardize_pair
from pckd.methods.weighting import WeightingParams
from pckd.params import Choice, Settings, hp


class CKDNegatives(Choice):
    """Where an anchor's negatives come from (``ckd.negatives``)."""

    teacher_student = "teacher_student"
    student_student = "student_student"


NEGATIVES = tuple(m.value for m in CKDNegatives)


def _float_compute(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast to at least float32 (half/bf16 -> float32, float64 stays float64) so the loss is never low-precision."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def _check_negatives(negatives: str) -> None:
    if negatives not in NEGATIVES:
        raise UserError(f"ckd.negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")


def _one_direction(anchor_hat: Tensor, other_hat: Tensor, rows: slice, tau: float, negatives: str) -> Tensor:
    """Per-row InfoNCE where ``anchor_hat`` plays the teacher's role and ``other_hat`` the student's.

    teacher_student: row r = [<a_i, o_j> / tau]_j, target column i (the positive <a_i, o_i> is in the row).
    student_student: row r = [<o_i, o_j> / tau]_j with column i (the self-similarity <o_i, o_i> = 1, which
        carries no information) replaced by the positive <a_i, o_i> / tau; negatives are <o_i, o_j>, j != i.
    Here i = rows.start + r indexes the full (possibly gathered) batch; columns run over the full batch.
    """
    n_rows = rows.stop - rows.start
    target = torch.arange(rows.start, rows.stop, device=anchor_hat.device)
    a = anchor_hat[rows]
    if negatives == "teacher_student":
        logits = a @ other_hat.T / tau
    else:
        o = other_hat[rows]
        logits = o @ other_hat.T / tau
        positive = (a * o).sum(dim=1, keepdim=True) / tau
        logits = logits.scatter(1, target.view(n_rows, 1), positive)
    return F.cross_entropy(logits, target, reduction="none")


def ckd_per_sample(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float,
    symmetric: bool = False,
    negatives: str = "teacher_student",
    rows: slice | None = None,
) -> Tensor:
    """Per-anchor CKD losses, shape [R] (R = number of ``rows``; all N rows by default).

    Args:
        student_logits, teacher_logits: [N, C]; N is the batch whose samples serve as negatives (under DDP the
            gathered global batch). Gradients flow into whichever input requires grad; callers pass a no-grad
            teacher.
        tau: temperature dividing the cosine similarities.
        symmetric: average (per sample) with the direction where teacher and student exchange roles.
        negatives: ``teacher_student`` (released code) or ``student_student`` (see :func:`_one_direction`).
        rows: which anchors to compute (the local slice of a gathered batch); the columns always span all N.

    Computed in float32 (float64 inputs stay float64), with autocast disabled.
    """
    _check_negatives(negatives)
    n = student_logits.shape[0]
    rows = slice(0, n) if rows is None else rows
    with no_autocast(student_logits):
        s, t = _float_compute(student_logits, teacher_logits)
        s_hat, t_hat = F.normalize(s, dim=1), F.normalize(t, dim=1)
        loss = _one_direction(t_hat, s_hat, rows, tau, negatives)
        if symmetric:
            loss = 0.5 * (loss + _one_direction(s_hat, t_hat, rows, tau, negatives))
    return loss


def ckd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float,
    symmetric: bool = False,
    negatives: str = "teacher_student",
) -> Tensor:
    """Batch-mean sample-wise contrastive loss (0-dim): mean over rows of :func:`ckd_per_sample`.

    Default (released code): ``mean_i -log( exp(S_ii) / sum_j exp(S_ij) )`` with
    ``S = normalize(t) @ normalize(s)^T / tau``; the denominator includes the positive.
    """
    return ckd_per_sample(student_logits, teacher_logits, tau, symmetric, negatives).mean()


@dataclass
class CKDParams(Settings):
    """Hyper-parameters of `ckd` (config section ``ckd.*``).

    ce_weight: w_CE (released code 1.0).
    weight: w_CL, the contrast weight. 10.0 is the released code's default (cfg.py); the CIFAR-100 configs set
        it per pair (100 for most, 10 for res56->res20 / res110->res32, 50 for vgg13->MV2 / wrn40_2->wrn40_1).
    tau: temperature on the cosine similarities (1.0; 2.0 for vgg13->MV2 and wrn40_2->wrn40_1).
    symmetric: also add the student-anchored direction (ablation; released code: False).
    negatives: ``teacher_student`` (released code) or ``student_student`` (third-party reading of the paper).
    global_negatives: under DDP, gather logits from all ranks so every anchor's negatives are the whole global
        batch, as in the released single-process code whose batch is global (default True). False: each rank
        contrasts only within its own shard. No effect in a single process.
    """

    ce_weight: float = hp(1.0, ge=0)
    weight: float = hp(10.0, ge=0)
    tau: float = hp(1.0, gt=0)
    symmetric: bool = hp(False)
    negatives: CKDNegatives = hp(CKDNegatives.teacher_student)
    global_negatives: bool = hp(True)
    logit_standardize: bool = hp(False, doc="z-score both logits per sample before the L2 normalisation (Sun et "
                                            "al. 2024; no released CKD recipe with it: weights unchanged)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-anchor InfoNCE")


@register_method("ckd", CKDParams, "sample-wise contrastive KD: CE + w * InfoNCE over teacher/student logits")
class CKD(TeacherDistiller):
    """CE + ``weight`` x InfoNCE between teacher and student logits over the (global) batch."""

    params: CKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: CKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        ce = self.cross_entropy(logits, batch.labels)
        s_cl, t_cl = standardize_pair(logits, teacher_logits, p.logit_standardize)

        if p.global_negatives and is_distributed():
            # Columns = the global batch; rows = this rank's anchors. The gather routes the gradient of every
            # rank's loss back to the rank owning the sample, and DDP's gradient average over ranks then equals
            # the gradient of the global-batch mean (exactly so when the shards are equal in size).
            both, rows = all_gather_rows(torch.cat([s_cl, t_cl.to(s_cl.dtype)], dim=1))  # one gather
            s_all, t_all = both.split(logits.shape[1], dim=1)
            per_anchor = ckd_per_sample(s_all, t_all, p.tau, p.symmetric, p.negatives, rows=rows)
        else:
            per_anchor = ckd_per_sample(s_cl, t_cl, p.tau, p.symmetric, p.negatives)
        contrast = self.weighting.mean(per_anchor, logits, batch.labels, epoch)
        losses = {"ce": p.ce_weight * ce, "ckd": p.weight * contrast}
        return StepOutput(logits=logits, losses=losses)
