"""Device-side metric accumulation: no host synchronisation until :meth:`StepMeter.read`."""

from __future__ import annotations

import torch
from torch import Tensor

from pckd import distributed


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose label is among the top-k predictions, for each k (a device tensor [len(ks)])."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels[:, None])
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


_NO_STEP = 2**62  # "never non-finite" marker of the first-bad-step trackers


class StepMeter:
    """Accumulates named 0-dim tensors and accuracy counts over steps, on the device.

    Besides sums and non-finite counts it keeps, per name, the first step at which the value was non-finite
    (a device tensor updated with ``torch.minimum``: no host synchronisation), so a guard can name the
    exact step once it does read the meter.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.samples = 0
        self.correct = torch.zeros(2, device=self.device, dtype=torch.float64)
        self.nonfinite: dict[str, Tensor] = {}
        self.first_bad: dict[str, Tensor] = {}

    def update(self, values: dict[str, Tensor], logits: Tensor, labels: Tensor, step: int | None = None) -> None:
        """Add one step. ``step`` is the caller's step index recorded for non-finite values (default: the
        number of steps this meter has seen so far)."""
        at = self.steps if step is None else int(step)
        for name, value in values.items():
            value = value.detach().float()
            finite = torch.isfinite(value)
            first = torch.where(finite, _NO_STEP, at).to(torch.int64)
            if name in self.sums:
                self.sums[name] += torch.where(finite, value, 0.0)
                self.nonfinite[name] += (~finite).int()
                self.first_bad[name] = torch.minimum(self.first_bad[name], first)
            else:
                self.sums[name] = torch.where(finite, value, 0.0)
                self.nonfinite[name] = (~finite).int()
                self.first_bad[name] = first
        self.correct += topk_correct(logits.detach(), labels)
        self.steps += 1
        self.samples += int(labels.shape[0])

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        """Means per step, top-1/top-5 (%), and non-finite counts per term: one host transfer.

        Under torchrun the sums and counts are all-reduced first, so every rank gets the numbers of the global
        batch (a term's mean over ranks and steps; accuracy over all ranks' samples; non-finite counts of any
        rank). That makes it a collective: every rank must call it at the same point.
        """
        names = list(self.sums)
        if not names:
            return {}, {}
        counts = torch.tensor([float(self.steps), float(self.samples)], dtype=torch.float64, device=self.device)
        packed = torch.cat([torch.stack([self.sums[n] for n in names]).double(), self.correct,
                            torch.stack([self.nonfinite[n] for n in names]).double(), counts])
        if distributed.is_distributed():
            torch.distributed.all_reduce(packed)
        values = packed.cpu().tolist()
        k = len(names)
        steps, samples = max(values[-2], 1.0), max(values[-1], 1.0)
        means = {n: values[i] / steps for i, n in enumerate(names)}
        means["top1"] = 100.0 * values[k] / samples
        means["top5"] = 100.0 * values[k + 1] / samples
        bad = {n: int(values[k + 2 + i]) for i, n in enumerate(names) if values[k + 2 + i] > 0}
        return means, bad

    def first_nonfinite(self) -> dict[str, int]:
        """For each name that was ever non-finite, the step index (as given to :meth:`update`) of its first
        non-finite value. One host transfer; meant for the error path."""
        names = list(self.first_bad)
        if not names:
            return {}
        steps = torch.stack([self.first_bad[n] for n in names]).cpu().tolist()
        return {n: int(s) for n, s in zip(names, steps) if s != _NO_STEP}
