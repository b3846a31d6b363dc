"""The PCKD distiller: 4 rotated views, one student and one teacher forward, the weighted terms of Eq. 8."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.distributed import (
    all_gather_rows,
    global_mean,
    is_distributed,
    is_main_process,
)
from pckd.errors import UserError
from pckd.methods.base import Distiller, EpochWriter, StepOutput, register_method
from pckd.methods.pckd.losses import (
    category_center_contrast,
    category_center_contrast_centers,
    category_profiles,
    center_alignment,
    feature_alignment,
    kd_per_sample,
)
from pckd.methods.pckd.params import CCCForm, PCKDParams
from pckd.methods.pckd.records import HISTORY_JSON, RECORDS_CSV, PreviewRecords
from pckd.methods.precision import as_float
from pckd.methods.weighting import (
    SampleWeighting,
    WeightingMode,
    difficulty,
    true_class_probability,
)
from pckd.models.interface import centres, feature_dim


def feature_mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Feature-alignment projector g: Linear -> BatchNorm1d -> ReLU -> Linear (BYOL-style head)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.ReLU(inplace=True),
                         nn.Linear(d_hidden, d_out))


@register_method("pckd", PCKDParams,
                 "PCKD: 4-rotation KD + category-centre contrast/alignment + feature alignment, preview-weighted")
class PCKD(Distiller):
    """Preview-based Category Contrastive KD (Ding et al., TCSVT 2025).

    Heads (trained with the student): ``fa_head`` d_s -> mult*d_t -> d_t (feature alignment), ``embed_s``
    d_s -> d_s and ``embed_t`` d_s -> d_t (category-centre contrast). A head whose loss weight is 0 is not built
    (under DDP an unused parameter would be an error). Only the CE-only ablations run without a teacher.
    """

    needs_teacher = True
    teacher_need_varies = True
    output_files = (RECORDS_CSV, HISTORY_JSON)
    params: PCKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: PCKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        p = params
        if teacher is None and p.distills:
            used = next(k for k in ("kd_weight", "ccc_weight", "fa_weight", "ca_weight") if getattr(p, k) > 0)
            raise UserError(f"method pckd needs a teacher for pckd.{used}: set teacher.arch (and teacher.checkpoint)")
        d_s = feature_dim(student)
        d_t = feature_dim(teacher) if teacher is not None else d_s
        self.weighting = SampleWeighting(p.preview.mode, p.gamma, p.preview.detach, p.preview.focal_power)
        self.fa_head = feature_mlp(d_s, p.mlp_hidden_mult * d_t, d_t) if p.fa_weight > 0 else None
        if p.ccc_weight > 0:
            self.embed_s: nn.Linear | None = nn.Linear(d_s, d_s)
            self.embed_t: nn.Linear | None = nn.Linear(d_s, d_t)
        else:
            self.embed_s = self.embed_t = None

        # Eq. 3 needs [W|b] of equal shapes; decide once and say so once.
        self.use_ca = False
        if p.ca_weight > 0 and teacher is not None:
            shape_s, shape_t = self._stacked_shape(student), self._stacked_shape(teacher)
            self.use_ca = shape_s == shape_t
            if not self.use_ca:
                warnings.warn(
                    f"pckd: centre alignment (pckd.ca_weight={p.ca_weight:g}) skipped: the student's classifier "
                    f"[W|b] is {shape_s} but the teacher's is {shape_t}; it needs equal shapes",
                    stacklevel=2,
                )
        self.records = PreviewRecords()

    @classmethod
    def uses_teacher(cls, params: PCKDParams) -> bool:
        """Only the CE-only ablations (every distillation weight 0, Tables VI/VII) run without a teacher."""
        return params.distills

    @property
    def history(self) -> dict[str, Any]:
        """The preview history of the finished epochs (what ``preview_history.json`` holds)."""
        return self.records.history

    @staticmethod
    def _stacked_shape(model: nn.Module) -> tuple[int, int]:
        w, b = centres(model)
        return (int(w.shape[0]), int(w.shape[1]) + (0 if b is None else 1))

    # ---- training step ---------------------------------------------------------------------------------
    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        """One step: 4 rotated views, one student and one teacher forward, the weighted terms of Eq. 8.

        Returns the student logits of the unrotated copies, the weighted terms ce/kd/ccc/fa/ca (a term whose
        weight is 0, or CA with mismatched classifier shapes, is absent) and the preview stats.
        """
        p = self.params
        n_rot = p.n_rotations
        labels = batch.labels
        views = batch.augment.rotated_views(batch.images, n_rot)  # [nB], flat index n*i + j
        need_teacher_forward = p.kd_weight > 0 or p.fa_weight > 0
        # Teacher first (see Distiller.logits_of_standard_view).
        out_t = self.teacher_features(views) if need_teacher_forward else None
        out_s = self.student_features(views)

        logits = out_s.logits[::n_rot]  # unrotated copies (j = 0)
        ce_i = F.cross_entropy(as_float(logits), labels, reduction="none")  # float64 stays float64

        # Preview weights; the batch-mean CE is global under DDP (Eq. 5 over the global batch).
        ce_src = ce_i if self.weighting.grad_through_weights else ce_i.detach()
        mean_ce = global_mean(ce_src)
        probs_true = true_class_probability(logits, labels) if self.weighting.mode == WeightingMode.focal else None
        w = self.weighting.weights(ce_src, probs_true, epoch, mean_ce)
        w_const = w.detach()  # the CCC weight never carries gradient (released code)
        s = difficulty(ce_i.detach(), mean_ce.detach())
        t = self.weighting.threshold(epoch)

        losses: dict[str, Tensor] = {}
        if p.ce_weight > 0:
            ce = self.weighting.reduce(ce_i, w) if p.preview.on_ce else ce_i.mean()
            losses["ce"] = p.ce_weight * ce
        if p.kd_weight > 0 and out_t is not None:
            kd_i = kd_per_sample(logits, out_t.logits[::n_rot], p.temperature)
            losses["kd"] = p.kd_weight * self.weighting.reduce(kd_i, w)
        if p.ccc_weight > 0:
            losses["ccc"] = p.ccc_weight * self.weighting.reduce(self._ccc(out_s.pooled, labels), w_const, n_rot)
        if self.fa_head is not None and out_t is not None:
            losses["fa"] = p.fa_weight * feature_alignment(self.fa_head(out_s.pooled), out_t.pooled)
        if self.use_ca:
            w_s, b_s = centres(self.student)
            w_t, b_t = centres(self.require_teacher(), detach=True)
            ca = center_alignment(w_s, b_s, w_t, b_t)
            if ca is not None:
                losses["ca"] = p.ca_weight * ca

        hard = (s > t).float()
        stats = {
            "threshold": torch.full((), t, device=s.device),
            "hard_fraction": hard.mean(),
            "weight_mean": w_const.mean(),
            "weight_min": w_const.min(),
        }
        if self.training:
            self.records.add(batch.index, labels, s, w_const)
        return StepOutput(logits=logits, losses=losses, stats=stats)

    def _ccc(self, f_s: Tensor, labels: Tensor) -> Tensor:
        """Per-copy category-centre contrast [nB] of the student features of all copies."""
        p = self.params
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError("pckd: the contrast heads were not built (pckd.ccc_weight=0)")
        labels_all = labels.repeat_interleave(p.n_rotations)
        w_s, _ = centres(self.student)
        w_t, _ = centres(self.require_teacher(), detach=True)
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_s)  # both embed the *student* feature (released code)
        if p.ccc == CCCForm.centers:
            return category_center_contrast_centers(e_s, e_t, w_s, w_t, labels_all, p.centers_tau)
        u_s, u_t = category_profiles(e_s, w_s), category_profiles(e_t, w_t)
        if p.ccc_global and is_distributed():
            # One differentiable gather of [u_s | u_t | label]: this rank's anchors against the global batch;
            # each rank's gradient flows back to the rank owning the copy (labels are exact in float32).
            k = u_s.shape[1]
            packed, rows = all_gather_rows(torch.cat([u_s, u_t, labels_all[:, None].to(u_s.dtype)], dim=1))
            u_s, u_t, labels_all = packed[:, :k], packed[:, k:2 * k], packed[:, 2 * k].long()
            return category_center_contrast(u_s, u_t, labels_all, p.ccc_tau, p.ccc_base_tau, rows=rows)
        return category_center_contrast(u_s, u_t, labels_all, p.ccc_tau, p.ccc_base_tau)

    # ---- epochs ------------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.records.clear()

    def epoch_records(self) -> dict[str, Tensor] | None:
        """This epoch's records gathered over ranks, on the CPU, sorted by index with duplicates dropped."""
        return self.records.gathered()

    def on_epoch_end(self, epoch: int, writer: EpochWriter | None = None) -> None:
        """Update the preview history; write histograms, ``preview_records.csv`` (this epoch) and
        ``preview_history.json`` through ``writer`` when there is one.

        Collective under DDP (records are gathered from every rank): call it on every rank; only rank 0 writes.
        """
        records = self.records.gathered()
        self.records.clear()
        if records is None:
            return
        last = self.records.update_history(epoch, self.weighting.threshold(epoch), records)
        if writer is None or not is_main_process():
            return
        writer.histogram("pckd/difficulty", records["difficulty"], epoch)
        writer.histogram("pckd/weight", records["weight"], epoch)
        # exact epoch values; the step stats' epoch means average per-batch values (a mean of batch minima)
        for key in ("weight_easy", "weight_hard", "hard_fraction", "weight_mean", "weight_min"):
            if last[key] is not None:
                writer.scalar(f"pckd/{key}", last[key], epoch)
        writer.write_text(RECORDS_CSV, PreviewRecords.csv_text(records))
        writer.write_text(HISTORY_JSON, self.records.history_json())

    # ---- checkpointed state ------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        """The preview history and, when saved mid-epoch, this rank's records of the epoch so far, so a resumed
        epoch reports the same records as an uninterrupted one (in one process; under DDP only rank 0's part)."""
        return self.records.state()

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.records.load_state(state, next(self.student.parameters()).device)
