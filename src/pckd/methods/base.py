"""The Distiller contract shared by every method, and the method registry.

A Distiller owns the student, its own trainable heads and a frozen teacher. The teacher is deliberately *not*
a registered submodule: it never enters ``state_dict``/``parameters()``/the optimizer, and wrapping the
distiller in DDP wraps only what trains. ``forward`` is ``forward_train`` so DDP hooks see the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.models.interface import FeatureOutput


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
        return torch.stack([v.float() for v in self.losses.values()]).sum()


class EpochWriter:
    """What a method may write at the end of an epoch (implemented by the trainer's run logger)."""

    run_dir: Any

    def scalar(self, name: str, value: float, epoch: int) -> None: ...

    def histogram(self, name: str, values: Tensor, epoch: int) -> None: ...


class Distiller(nn.Module):
    """Base class: a method's training step around a student (and optionally a frozen teacher).

    Subclasses set ``needs_teacher`` and implement :meth:`forward_train`. Heads created in ``__init__`` as
    submodules are trained with the student (same optimizer, same weight decay) and counted as extra parameters.
    """

    needs_teacher: ClassVar[bool] = True
    # Methods with per-sample memory (CRD's memory bank) set this; they are then built with an extra keyword
    # argument ``train_size`` (the number of training images; ``Batch.index`` lies in [0, train_size)).
    wants_train_size: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: Any, num_classes: int) -> None:
        super().__init__()
        self.student = student
        self.params = params
        self.num_classes = num_classes
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
        return self.__dict__["_teacher"]

    def teacher_features(self, x: Tensor) -> FeatureOutput:
        """Teacher forward without autograd; outputs are plain tensors usable in the student's loss graph."""
        teacher = self.teacher
        assert teacher is not None, "this method has no teacher"
        with torch.no_grad():
            out = teacher.forward_features(x)
        return out

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always stays in eval mode (BN statistics frozen)
        return self

    def _apply(self, fn: Callable, recurse: bool = True):  # keep .to()/.cuda() moving the teacher too
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    # ---- training step -----------------------------------------------------------------------------------
    def forward(self, batch: Batch, epoch: int) -> StepOutput:  # noqa: D102 - see forward_train
        return self.forward_train(batch, epoch)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        """One training step's forward: views, student/teacher forward, named weighted losses."""
        raise NotImplementedError

    # ---- hooks and state ---------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of ``epoch`` (epochs count from 1); not again when a run resumes in
        the middle of ``epoch`` (the state it set up comes back through :meth:`load_method_state`)."""

    def on_epoch_end(self, epoch: int, writer: EpochWriter) -> None:
        """Called after the last step of ``epoch``; may write records/plots into ``writer.run_dir``."""

    def method_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (queues, memory banks, ...). Buffers are already in state_dict."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`method_state`."""

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds on top of the student (its heads)."""
        student = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in student)


# ---- registry --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type[Distiller]
    params: type  # dataclass of the method's hyper-parameters; its fields are the config section `<name>.*`
    summary: str


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, params: type, summary: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: ``@register_method("kd", KDParams, "Hinton KD")``."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, cls, params, summary)
        return cls

    return deco


def method_registry() -> dict[str, MethodSpec]:
    """All registered methods (importing :mod:`pckd.methods` registers the built-in ones)."""
    import pckd.methods  # noqa: F401  (side effect: registration)

    return dict(_REGISTRY)
