"""Device-side metric accumulation: no host synchronisation until :meth:`StepMeter.read`."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose label is among the top-k predictions, for each k (a device tensor [len(ks)])."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels[:, None])
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


class StepMeter:
    """Accumulates named 0-dim tensors and accuracy counts over steps, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.samples = 0
        self.correct = torch.zeros(2, device=self.device, dtype=torch.float64)
        self.nonfinite: dict[str, Tensor] = {}

    def update(self, values: dict[str, Tensor], logits: Tensor, labels: Tensor) -> None:
        for name, value in values.items():
            value = value.detach().float()
            finite = torch.isfinite(value)
            if name in self.sums:
                self.sums[name] += torch.where(finite, value, 0.0)
                self.nonfinite[name] += (~finite).int()
            else:
                self.sums[name] = torch.where(finite, value, 0.0)
                self.nonfinite[name] = (~finite).int()
        self.correct += topk_correct(logits.detach(), labels)
        self.steps += 1
        self.samples += int(labels.shape[0])

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        """Means per step, top-1/top-5 (%), and non-finite counts per term: one host transfer."""
        names = list(self.sums)
        if not names:
            return {}, {}
        packed = torch.cat([torch.stack([self.sums[n] for n in names]).double(), self.correct,
                            torch.stack([self.nonfinite[n] for n in names]).double()]).cpu().tolist()
        k = len(names)
        means = {n: packed[i] / max(self.steps, 1) for i, n in enumerate(names)}
        means["top1"] = 100.0 * packed[k] / max(self.samples, 1)
        means["top5"] = 100.0 * packed[k + 1] / max(self.samples, 1)
        bad = {n: int(packed[k + 2 + i]) for i, n in enumerate(names) if packed[k + 2 + i] > 0}
        return means, bad
