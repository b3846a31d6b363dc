"""PCKD's hyper-parameters (section ``pckd.*``); CIFAR-100 defaults of the released code and docs/defaults.md."""

from __future__ import annotations

from dataclasses import dataclass

from pckd.params import Choice, Settings, hp


class PreviewMode(Choice):
    """PCKD's sample weighting (``pckd.preview.mode``), in the paper's words: the preview, switched off, or the
    curriculum/focal variants of Tables VIII-IX. The same reducer serves other methods as ``weighting.mode``."""

    off = "off"
    preview = "preview"
    curriculum = "curriculum"
    focal = "focal"
    none = "off"  # alias: the other methods' word for it


class CCCForm(Choice):
    """How Eq. 4 (category-centre contrast) is computed (``pckd.ccc``)."""

    supcon = "supcon"  # the released code: SupCon over category-similarity profiles
    centers = "centers"  # the paper's reading: cosine softmax of each feature against the K centres


@dataclass
class PreviewParams(Settings):
    """The preview section ``pckd.preview.*`` (Eqs. 5-7 and their ablations)."""

    mode: PreviewMode = hp(PreviewMode.preview, doc="off | preview | curriculum | focal")
    detach: bool = hp(True, doc="False = released code (the KD weight carries gradient; the CCC weight never does)")
    on_ce: bool = hp(False, doc="also weight CE (Table VII)")
    focal_power: float = hp(2.0, ge=0, doc="exponent of (1 - p_y) in focal mode (the released focal_loss uses 2)")


@dataclass
class PCKDParams(Settings):
    """Hyper-parameters of `pckd` (section ``pckd.*``)."""

    temperature: float = hp(4.0, gt=0, doc="KD temperature T")
    ce_weight: float = hp(1.0, ge=0)
    kd_weight: float = hp(1.0, ge=0, doc="the paper's value is stripped; 1 is the project's assumption, 0 = 'w/o L_KD'")
    ccc_weight: float = hp(0.05, ge=0)
    fa_weight: float = hp(20.0, ge=0)
    ca_weight: float = hp(1.0, ge=0, doc="skipped automatically when the classifier shapes differ")
    ccc: CCCForm = hp(CCCForm.supcon, doc="supcon (released code) | centers (paper's reading)")
    ccc_tau: float = hp(4.0, gt=0, doc="SupCon temperature of the released code")
    ccc_base_tau: float = hp(0.07, gt=0, doc="SupCon base temperature (loss scale tau / base_tau = 57.14)")
    centers_tau: float = hp(0.1, gt=0, doc="cosine temperature of `ccc: centers` (paper's value stripped; assumption)")
    mlp_hidden_mult: int = hp(16, ge=1, doc="feature-alignment MLP hidden width = mult * d_teacher")
    n_rotations: int = hp(4, ge=1, doc="rotated copies of each image")
    gamma: float = hp(1.005, gt=0, doc="threshold growth; configs with a resnet20 student use 1.015")
    ccc_global: bool = hp(True, doc="DDP: supcon contrast over the gathered global batch (False: within each rank)")
    preview: PreviewParams = hp(factory=PreviewParams)

    def __post_init__(self) -> None:
        if isinstance(self.preview, dict):  # plain mappings from code
            self.preview = PreviewParams(**self.preview)
        super().__post_init__()

    @property
    def distills(self) -> bool:
        """Whether any term reads the teacher (only the CE-only ablations of Tables VI/VII do not)."""
        return any(getattr(self, k) > 0 for k in ("kd_weight", "ccc_weight", "fa_weight", "ca_weight"))
