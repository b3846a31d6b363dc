"""The Distiller contract shared by every method, and the method registry.

A Distiller owns the student, its own trainable heads and (for most methods) a frozen teacher. The teacher is
deliberately *not* a registered submodule: it never enters ``state_dict``/``parameters()``/the optimizer, and
wrapping the distiller in DDP wraps only what trains. ``forward`` is ``forward_train`` so DDP hooks see the
whole step. See docs/architecture.md for the whole contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.weighting import SampleWeighting, WeightingParams
from pckd.models.interface import FeatureModel, FeatureOutput
from pckd.params import set_section


@dataclass
class StepOutput:
    """What one training step of a method returns.

    logits: student logits on the plain (unrotated) images, [B, K]; used for training accuracy.
    losses: named, already weighted loss terms (0-dim tensors); the trainer back-propagates their sum and logs
        each one.
    stats: named 0-dim tensors to log (averaged over the epoch), e.g. PCKD's threshold or hard-sample fraction.
    """

    logits: Tensor
    losses: dict[str, Tensor]
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        """The sum of the loss terms (float32 at least), the quantity the trainer back-propagates."""
        return torch.stack([v.float() for v in self.losses.values()]).sum()


class EpochWriter(Protocol):
    """What a method may write at the end of an epoch (the trainer's run logger implements it)."""

    def scalar(self, name: str, value: float, epoch: int) -> None:
        """A scalar for TensorBoard."""

    def histogram(self, name: str, values: Tensor, epoch: int) -> None:
        """A histogram for TensorBoard."""

    def write_text(self, name: str, text: str) -> None:
        """Write the run-folder file ``name`` (one of the method's ``output_files``) atomically."""


class Distiller(nn.Module):
    """Base class: a method's training step around a student and, optionally, a frozen teacher.

    Subclasses implement :meth:`forward_train`. Heads created in ``__init__`` as submodules are trained with the
    student (same optimizer, same weight decay) and counted as extra parameters. Methods that always need a
    teacher derive from :class:`TeacherDistiller` instead.
    """

    # Whether the method uses a teacher in its default configuration (see :meth:`uses_teacher`).
    needs_teacher: ClassVar[bool] = False
    # True where `uses_teacher` depends on the hyper-parameters (PCKD's CE-only ablation rows), so teacher keys
    # shared by the rows of one grid are kept rather than refused.
    teacher_need_varies: ClassVar[bool] = False
    # Files the method writes into the run folder (``on_epoch_end`` through the writer); removed on overwrite.
    output_files: ClassVar[tuple[str, ...]] = ()
    # Whether some trainable parameters get no gradient in some steps (heads of one stage of a two-stage method):
    # DDP then needs find_unused_parameters, which costs an extra pass over the graph every step.
    has_unused_parameters: ClassVar[bool] = False
    # Whether the method draws MLD's strong view (``batch.augment.strong``): worker-fed data (ImageFolder) must
    # then make it in the workers, so the data layer is told before it builds the loaders.
    strong_view: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: Any, data: DataInfo) -> None:
        super().__init__()
        self.student = student
        self.params = params
        self.data = data
        self.num_classes = data.num_classes
        # How per-sample terms are reduced: the method's `weighting.*` section, or the plain batch mean.
        weighting = getattr(params, "weighting", None)
        self.weighting = weighting.build() if isinstance(weighting, WeightingParams) else SampleWeighting("none")
        # Kept out of the module tree on purpose (see module docstring).
        self.__dict__["_teacher"] = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    @classmethod
    def uses_teacher(cls, params: Any) -> bool:
        """Whether a run with these hyper-parameters needs a teacher (default: ``needs_teacher``)."""
        return cls.needs_teacher

    # ---- teacher -----------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (eval mode, no gradients), or None."""
        return self.__dict__["_teacher"]

    def require_teacher(self) -> nn.Module:
        """The teacher; a method calls this where its configuration makes a teacher mandatory."""
        teacher = self.__dict__["_teacher"]
        if teacher is None:
            raise RuntimeError(f"{type(self).__name__} was built without a teacher but its settings use one")
        return teacher

    def teacher_features(self, x: Tensor) -> FeatureOutput:
        """Teacher forward without autograd; outputs are plain tensors usable in the student's loss graph."""
        with torch.no_grad():
            return cast(FeatureModel, self.require_teacher()).forward_features(x)

    def student_features(self, x: Tensor) -> FeatureOutput:
        """Student forward through the features interface: stage outputs, pooled feature and logits."""
        return cast(FeatureModel, self.student).forward_features(x)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always stays in eval mode (BN statistics frozen)
        return self

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Distiller:  # .to()/.cuda() move the teacher
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    # ---- the shared prelude of a training step ----------------------------------------------------------
    # Teacher first in both helpers: its forward then runs before the student's activations are held for the
    # backward, which measured ~25% less CPU time per step than the other order (benchmarks/README.md).
    def logits_of_standard_view(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(student logits, teacher logits) on one standard training view of the batch."""
        x = batch.augment.standard(batch.images)
        teacher_logits = self.teacher_features(x).logits
        return self.student(x), teacher_logits

    def features_of_standard_view(self, batch: Batch) -> tuple[FeatureOutput, FeatureOutput]:
        """(student features, teacher features) on one standard training view of the batch."""
        x = batch.augment.standard(batch.images)
        teacher_out = self.teacher_features(x)
        return self.student_features(x), teacher_out

    @staticmethod
    def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy on the labels, computed in float32."""
        return F.cross_entropy(logits.float(), labels)

    # ---- training step -----------------------------------------------------------------------------------
    def forward(self, batch: Batch, epoch: int) -> StepOutput:
        return self.forward_train(batch, epoch)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        """One training step's forward: views, student/teacher forward, named weighted losses."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_train")

    # ---- hooks and state ---------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of ``epoch`` (epochs count from 1); not again when a run resumes in
        the middle of ``epoch`` (the state it set up comes back through :meth:`load_method_state`)."""

    def on_epoch_end(self, epoch: int, writer: EpochWriter | None = None) -> None:
        """Called after the last step of ``epoch``; may write its ``output_files`` through ``writer`` (None when
        the method runs outside the trainer, e.g. in a user's own loop)."""

    def stage_lr(self, epoch: int) -> float | None:
        """The learning rate of ``epoch`` when a stage of the method has its own schedule (SSKD's teacher
        stage), applied to every parameter group in place of ``train.*``'s schedule; None (the default): the
        run's schedule. A pure function of the epoch, so a resumed run gets the same rate."""
        return None

    def method_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (queues, memory banks, ...). Buffers are already in state_dict."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`method_state`."""

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds on top of the student (its heads)."""
        student = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in student)


class TeacherDistiller(Distiller):
    """A method that always distils from a teacher: the teacher is a required constructor argument."""

    needs_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module, params: Any, data: DataInfo) -> None:
        if teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher model")
        super().__init__(student, teacher, params, data)

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (eval mode, no gradients)."""
        teacher: nn.Module = self.__dict__["_teacher"]
        return teacher


# ---- registry --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, Distiller class, hyper-parameter dataclass and one-line summary."""

    name: str
    cls: type[Distiller]
    params: type  # dataclass of the method's hyper-parameters; its fields are the config section `<name>.*`
    summary: str


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, params: type, summary: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: ``@register_method("kd", KDParams, "Hinton KD")``. The params' keys become ``kd.*``."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        set_section(params, name)
        _REGISTRY[name] = MethodSpec(name, cls, params, summary)
        return cls

    return deco


# Names that once meant a method of this project and are refused now, with what to use instead.
RETIRED_METHODS: dict[str, str] = {
    "lskd": "was renamed 'ls' (Sun et al.'s logit standardisation, CVPR 2024): use method=ls, see "
            "docs/methods/ls.md; the PCKD paper's LSKD (Li, Cheng and Han, TCSVT 2024) has no public code or "
            "equations and is not built",
}


def check_not_retired(name: str, key: str = "method") -> None:
    """Raise the one-line UserError of a retired method name (see :data:`RETIRED_METHODS`); else nothing."""
    if name in RETIRED_METHODS:
        raise UserError(f"config key '{key}'={name!r} {RETIRED_METHODS[name]}")


def method_registry() -> dict[str, MethodSpec]:
    """All registered methods (importing :mod:`pckd.methods` registers the built-in ones)."""
    import pckd.methods  # noqa: F401  (side effect: registration)

    return dict(_REGISTRY)
