"""Ways of running the same computation faster: torch.compile of the student, channels_last views."""

from __future__ import annotations

from typing import Any

import torch


def compile_student(student: torch.nn.Module) -> None:
    """``torch.compile`` the student where methods call it: ``forward_features`` (PCKD and every method that
    needs features; zoo models' ``forward`` goes through it too) and ``forward``. ``Module.compile()`` alone
    would only cover ``forward``, which PCKD never calls."""
    forward_features = getattr(student, "forward_features", None)
    if forward_features is not None:
        student.forward_features = torch.compile(forward_features)  # type: ignore[assignment]
    student.compile()


class ChannelsLastAugment:
    """Wraps an augmenter so every view it returns is in channels_last layout."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            return out.contiguous(memory_format=torch.channels_last) if isinstance(out, torch.Tensor) and out.dim() == 4 else out

        return wrapped
