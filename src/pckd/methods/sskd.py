"""SSKD (`sskd`; Xu et al., "Knowledge Distillation Meets Self-Supervision", ECCV 2020), two-stage as the
authors' ``student.py`` (xuguodong03/SSKD).

Every step sees 4 rotated copies of each image (0/90/180/270 degrees, flat index ``4*i + j``). A projection head
on the pooled feature embeds every copy; the self-supervision task matches each rotated copy to its own unrotated
image among all unrotated images of the batch (cosine similarities, a [3B, B] matrix).

* Teacher stage (epochs ``1..init_epochs``, default 60): only the teacher's head trains, on CE of the teacher's
  similarity matrix against the source index (no temperature); the teacher's backbone is frozen and in eval mode,
  its features detached. Its own lr schedule (``init_lr`` x ``init_lr_decay`` after each of ``init_milestones``)
  replaces the run's through :meth:`SSKD.stage_lr`.
* Student stage: ``ce * CE(unrotated) + kd * KD(unrotated, T) + tf * TF + ss * SS`` with the student's head
  trained jointly and the teacher's head frozen. TF distils the rotated copies' predictions, SS the similarity
  matrices, each on a subset chosen by the teacher's error level (:func:`kept_rows`).

Equations, defaults with their source lines and deviations: docs/methods/sskd.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.ab import in_init_stage
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.ft import eval_mode
from pckd.methods.kd import kd_per_sample
from pckd.methods.precision import as_float, no_autocast
from pckd.models.interface import feature_dim
from pckd.params import Settings, hp

N_COPIES = 4  # the released cifar.py stacks np.rot90(img, k) for k = 0, 1, 2, 3
COSINE_EPS = 1e-8  # F.cosine_similarity's default eps, which the released code uses


# ---- pure functions --------------------------------------------------------------------------------------
def split_copies(x: Tensor, n_copies: int = N_COPIES) -> tuple[Tensor, Tensor]:
    """Rows ``n*i + j`` of ``x`` -> (unrotated rows ``j = 0`` [B, ...], rotated rows ``j > 0`` [(n-1)B, ...],
    in the order ``(n-1)*i + j - 1``), the released code's ``nor_index`` / ``aug_index`` masks."""
    if x.shape[0] % n_copies:
        raise ValueError(f"split_copies needs a multiple of {n_copies} rows, got {x.shape[0]}")
    rows = x.reshape(x.shape[0] // n_copies, n_copies, *x.shape[1:])
    return rows[:, 0], rows[:, 1:].reshape(-1, *x.shape[1:])


def copy_similarity(embeddings: Tensor, n_copies: int = N_COPIES, eps: float = COSINE_EPS) -> Tensor:
    """Cosine similarity of every rotated copy's embedding with every unrotated embedding of the batch:
    ``[n*B, d]`` (flat index ``n*i + j``) -> ``[(n-1)B, B]``, row ``(n-1)*i + j - 1``, column ``b``.

    Each norm is clamped at ``eps`` as ``F.cosine_similarity`` does; computed as one matrix product of the
    normalised rows (the released code expands both sides to [3B, d, B] first), at least in float32.
    """
    e = as_float(embeddings)
    with no_autocast(e):
        unrotated, rotated = split_copies(e, n_copies)
        unit_u = unrotated / unrotated.norm(dim=1, keepdim=True).clamp_min(eps)
        unit_r = rotated / rotated.norm(dim=1, keepdim=True).clamp_min(eps)
        return unit_r @ unit_u.t()


def copy_sources(n_images: int, n_copies: int = N_COPIES, device: torch.device | None = None) -> Tensor:
    """The source image of each rotated copy, ``[(n-1)B]``: ``i`` repeated ``n-1`` times (the SS "labels")."""
    return torch.arange(n_images, device=device).repeat_interleave(n_copies - 1)


def teacher_ss_loss(similarity: Tensor) -> Tensor:
    """Teacher stage: mean cross-entropy of the [(n-1)B, B] similarities (as logits, no temperature) against
    each copy's source image."""
    n_copies = similarity.shape[0] // similarity.shape[1] + 1
    sources = copy_sources(similarity.shape[1], n_copies, similarity.device)
    return F.cross_entropy(as_float(similarity), sources)


def target_rank(scores: Tensor, target: Tensor) -> Tensor:
    """Rank of the target column in each row of ``scores`` sorted in descending order, ``[N]`` (0: the target
    scores highest). Counts the entries strictly above the target's, which is the position the released code's
    ``argsort(descending=True)`` gives when no entry ties with the target's."""
    picked = scores.gather(1, target[:, None])
    return (scores > picked).sum(dim=1)


def kept_rows(rank: Tensor, ratio: float) -> Tensor:
    """Boolean mask ``[N]`` of the rows a transfer term keeps: every row of rank 0 (the teacher is right) and
    ``int(ratio * wrong)`` of the ``wrong`` others, those of the smallest rank, ties by row order.

    Computed on the device without reading the count back (no host synchronisation per step)."""
    order = torch.sort(rank, stable=True).indices
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    wrong = (rank > 0).sum()
    exact = torch.float32 if rank.device.type == "mps" else torch.float64  # int(wrong * ratio) as Python's
    keep = rank.numel() - wrong + torch.floor(wrong.to(exact) * ratio).long()
    return position < keep


def kl_of_kept(student: Tensor, teacher: Tensor, keep: Tensor, T: float) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` summed over the rows where ``keep`` is true and
    divided by their number (``F.kl_div(..., reduction='batchmean')`` on the kept rows); 0 when none is kept."""
    per_row = kd_per_sample(student, teacher, T)
    mask = keep.to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def transformation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float,
                        ratio: float) -> tuple[Tensor, Tensor]:
    """TF term on the rotated copies (rows ``[(n-1)B, K]``, ``labels`` per copy): KD at ``T`` on the copies kept by
    the rank of the true class in the teacher's prediction (:func:`kept_rows`). Returns (loss, kept mask)."""
    keep = kept_rows(target_rank(teacher_logits.detach(), labels), ratio)
    return kl_of_kept(student_logits, teacher_logits, keep, T), keep


def similarity_loss(student_similarity: Tensor, teacher_similarity: Tensor, T: float,
                    ratio: float) -> tuple[Tensor, Tensor]:
    """SS term: KD at ``T`` between the rows of the [(n-1)B, B] similarity matrices (times T^2), on the copies
    kept by the rank of their own source image in the teacher's similarities. Returns (loss, kept mask)."""
    n_copies = student_similarity.shape[0] // student_similarity.shape[1] + 1
    sources = copy_sources(student_similarity.shape[1], n_copies, student_similarity.device)
    keep = kept_rows(target_rank(teacher_similarity.detach(), sources), ratio)
    return kl_of_kept(student_similarity, teacher_similarity, keep, T), keep


def stage_rate(epoch: int, lr: float, milestones: list[int], decay: float) -> float:
    """``lr * decay^(number of milestones m with epoch > m)``: MultiStepLR stepped once per epoch (epochs from 1)."""
    return lr * decay ** sum(epoch > m for m in milestones)


# ---- heads ----------------------------------------------------------------------------------------------
def proj_head(dim: int) -> nn.Sequential:
    """The released ``wrapper.proj_head``: Linear(d, d) -> ReLU -> Linear(d, d) on the pooled feature."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class SSKDParams(Settings):
    """Hyper-parameters of `sskd` (section ``sskd.*``); defaults are the argparse defaults of the released
    ``student.py``."""

    ce_weight: float = hp(0.1, ge=0, doc="student stage: weight of CE on the unrotated copies (--ce-weight)")
    kd_weight: float = hp(0.9, ge=0, doc="student stage: weight of KD on the unrotated copies (--kd-weight)")
    tf_weight: float = hp(2.7, ge=0, doc="student stage: weight of the transformation term TF (--tf-weight)")
    ss_weight: float = hp(10.0, ge=0, doc="student stage: weight of the self-supervision term SS (--ss-weight)")
    kd_temperature: float = hp(4.0, gt=0, doc="temperature of KD (--kd-T)")
    tf_temperature: float = hp(4.0, gt=0, doc="temperature of TF (--tf-T)")
    ss_temperature: float = hp(0.5, gt=0, doc="temperature of SS, whose KL is also times T^2 (--ss-T)")
    ratio_tf: float = hp(1.0, ge=0, le=1, doc="fraction of the copies the teacher misclassifies that TF keeps "
                                              "(--ratio-tf)")
    ratio_ss: float = hp(0.75, ge=0, le=1, doc="fraction of the copies the teacher's head mismatches that SS "
                                               "keeps (--ratio-ss)")
    init_epochs: int = hp(60, ge=0, doc="epochs 1..init_epochs train only the teacher's head (--t-epoch)")
    init_lr: float = hp(0.05, gt=0, doc="teacher stage: learning rate (--t-lr)")
    init_milestones: list[int] = hp(factory=lambda: [30, 45], ge=0,
                                    doc="teacher stage: epochs after which its lr *= init_lr_decay (--t-milestones)")
    init_lr_decay: float = hp(0.1, gt=0, doc="teacher stage: lr decay factor (--gamma)")


@register_method("sskd", SSKDParams, "SSKD: teacher stage trains a rotation-matching head on the teacher, then CE + "
                                     "KD + TF on rotated copies + SS on similarity matrices")
class SSKD(TeacherDistiller):
    """Teacher stage: ``ss_init`` trains ``teacher_head``; student stage: ce/kd/tf/ss with ``student_head``."""

    params: SSKDParams
    has_unused_parameters = True  # the teacher's head trains in the teacher stage, the student after it

    def __init__(self, student: nn.Module, teacher: nn.Module, params: SSKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        self.teacher_head = proj_head(feature_dim(teacher))
        self.student_head = proj_head(feature_dim(student))

    def stage_lr(self, epoch: int) -> float | None:
        """The teacher stage's own rate (``init_lr`` with its milestones); None in the student stage."""
        p = self.params
        if not in_init_stage(epoch, p.init_epochs):
            return None
        return stage_rate(epoch, p.init_lr, p.init_milestones, p.init_lr_decay)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        views = batch.augment.rotated_views(batch.images, N_COPIES)  # [4B], flat index 4*i + j
        t = self.teacher_features(views)  # teacher first; no autograd: its features are detached
        if in_init_stage(epoch, self.params.init_epochs):
            return self._teacher_stage(views, t.pooled)
        return self._student_stage(views, t.logits, t.pooled, batch.labels)

    def _teacher_stage(self, views: Tensor, t_pooled: Tensor) -> StepOutput:
        similarity = copy_similarity(self.teacher_head(t_pooled))
        sources = copy_sources(similarity.shape[1], N_COPIES, similarity.device)
        # The student is untouched: its logits only feed the logged training accuracy.
        with torch.no_grad(), eval_mode(self.student):
            logits = self.student(views[::N_COPIES])
        stats = {"teacher_ss_acc": (similarity.detach().argmax(dim=1) == sources).float().mean() * 100.0}
        return StepOutput(logits=logits, losses={"ss_init": teacher_ss_loss(similarity)}, stats=stats)

    def _student_stage(self, views: Tensor, t_logits: Tensor, t_pooled: Tensor, labels: Tensor) -> StepOutput:
        p = self.params
        with torch.no_grad():  # the teacher's head is frozen after its stage
            t_similarity = copy_similarity(self.teacher_head(t_pooled))
        s = self.student_features(views)
        s_similarity = copy_similarity(self.student_head(s.pooled))
        s_plain, s_rotated = split_copies(s.logits)
        t_plain, t_rotated = split_copies(t_logits)
        copy_labels = labels.repeat_interleave(N_COPIES - 1)
        tf, tf_keep = transformation_loss(s_rotated, t_rotated, copy_labels, p.tf_temperature, p.ratio_tf)
        ss, ss_keep = similarity_loss(s_similarity, t_similarity, p.ss_temperature, p.ratio_ss)
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s_plain, labels),
            "kd": p.kd_weight * kd_per_sample(s_plain, t_plain, p.kd_temperature).mean(),
            "tf": p.tf_weight * tf,
            "ss": p.ss_weight * ss,
        }
        sources = copy_sources(labels.shape[0], N_COPIES, labels.device)
        stats = {
            "tf_kept": tf_keep.float().mean(),
            "ss_kept": ss_keep.float().mean(),
            "student_ss_acc": (s_similarity.detach().argmax(dim=1) == sources).float().mean() * 100.0,
        }
        return StepOutput(logits=s_plain, losses=losses, stats=stats)


__all__ = ["SSKD", "SSKDParams", "copy_similarity", "copy_sources", "kept_rows", "kl_of_kept", "proj_head",
           "similarity_loss", "split_copies", "stage_rate", "target_rank", "teacher_ss_loss",
           "transformation_loss"]
