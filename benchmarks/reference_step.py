"""A straightforward training step written the way the released PCKD code works (the benchmark's baseline).

This is *not* the project's implementation; it is the comparison point for ``benchmarks/train_step.py``:

* data: a torch ``DataLoader`` with worker processes over a per-sample ``Dataset``. For PCKD every image is
  flipped once (p = 0.5, shared by its copies), rotated by 0/90/180/270 degrees with ``np.rot90``, and each
  copy goes through its own ``RandomCrop(32, padding=4) -> ToTensor -> Normalize`` (PIL); the copies are
  stacked to [4, 3, 32, 32] per sample (docs/methods/pckd.md). CE and KD use the usual per-sample
  ``RandomCrop -> RandomHorizontalFlip -> ToTensor -> Normalize``.
* step: one student forward on the 4B images, the teacher under ``no_grad``; the loss modules are called one
  after another (CE, per-sample KL, a SupCon-style category contrast, an MLP feature-alignment head, an MSE
  centre alignment) and the preview weights are broadcast to the 4 copies through a Python list built from
  ``.item()`` calls (one host read per copy), as docs/methods/pckd.md and 1.10 describe.

The networks are the project's zoo models (the same ones the project trains), so a comparison measures the
pipeline and loss code, not different architectures.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


def _transforms(mean: tuple[float, ...], std: tuple[float, ...], flip: bool) -> Callable[[Image.Image], Tensor]:
    import torchvision.transforms as T

    steps: list[Any] = [T.RandomCrop(32, padding=4)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


class StandardCIFAR(Dataset):
    """One augmented view per sample (teacher/KD training loaders of RepDistiller-style code)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]):
        self.images, self.labels = images_hwc, labels
        self.transform = _transforms(mean, std, flip=True)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i]), i


class RotatedCIFAR(Dataset):
    """Four rotated copies per sample, each with its own crop (the released PCKD training set)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                 n_rotations: int = 4):
        self.images, self.labels = images_hwc, labels
        self.transform = _transforms(mean, std, flip=False)
        self.n_rotations = n_rotations

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        img = self.images[i]
        if random.random() < 0.5:  # python's RNG: the DataLoader seeds it per worker
            img = np.fliplr(img)
        copies = [self.transform(Image.fromarray(np.ascontiguousarray(np.rot90(img, k))))
                  for k in range(self.n_rotations)]
        return torch.stack(copies), int(self.labels[i]), i


class WeakStrongCIFAR(Dataset):
    """MLD's released training set: a weak (crop + flip) and a strong (crop + flip, RandAugment 2 ops, Cutout)
    view per sample, each through PIL (``MultipleApply`` of ``mdistiller/dataset/cifar100.py``)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]):
        import torchvision.transforms as T

        from pckd.data.randaugment_pil import RandAugmentCutout

        self.images, self.labels = images_hwc, labels
        self.weak = _transforms(mean, std, flip=True)
        self.strong = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), RandAugmentCutout(),
                                 T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        img = Image.fromarray(self.images[i])
        return torch.stack([self.weak(img), self.strong(img)]), int(self.labels[i]), i


def make_loader(dataset: Dataset, batch_size: int, workers: int, seed: int = 0) -> DataLoader:
    """Shuffled batches from ``workers`` worker processes (persistent, as a training run keeps them)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=False,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


# ---- loss modules, one per term ---------------------------------------------------------------------------
class DistillKL(nn.Module):
    """T^2 * KL(teacher || student) per row, divided by the batch size (summed over rows = the batch mean)."""

    def __init__(self, T: float) -> None:
        super().__init__()
        self.T = T

    def forward(self, y_s: Tensor, y_t: Tensor) -> Tensor:
        log_p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="none").sum(1) * self.T ** 2 / y_s.shape[0]


class CategoryConLoss(nn.Module):
    """SupCon over two 'views' (student and teacher category profiles), per anchor, halves summed."""

    def __init__(self, temperature: float = 4.0, base_temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature, self.base_temperature = temperature, base_temperature

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:  # features [N, 2, K]
        n, views = features.shape[0], features.shape[1]
        contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
        anchor_dot_contrast = torch.div(torch.matmul(contrast, contrast.T), self.temperature)
        logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
        logits = anchor_dot_contrast - logits_max.detach()
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).float().repeat(views, views)
        logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(n * views).view(-1, 1), 0)
        mask = mask * logits_mask
        exp_logits = torch.exp(logits) * logits_mask
        log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + 1e-7)
        mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        return loss.view(views, n).sum(0)


class MLPHead(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(d_hidden, d_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Embed(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=1)


# ---- the steps --------------------------------------------------------------------------------------------
@dataclass
class ReferenceSetup:
    """Models, heads, loss modules and optimizer of one reference run."""

    method: str
    student: nn.Module
    teacher: nn.Module | None
    heads: nn.ModuleDict
    optimizer: torch.optim.Optimizer
    losses: dict[str, nn.Module]


def build_reference(method: str, student: nn.Module, teacher: nn.Module | None, lr: float = 0.05) -> ReferenceSetup:
    """Heads and loss modules as the released code creates them; SGD over the student and the heads."""
    heads = nn.ModuleDict()
    losses: dict[str, nn.Module] = {"ce": nn.CrossEntropyLoss()}
    if method in ("kd", "pckd"):
        losses["kd"] = DistillKL(4.0)
    if method == "pckd":
        assert teacher is not None
        d_s, d_t = student.penultimate_dim, teacher.penultimate_dim
        heads["mlp"] = MLPHead(d_s, 16 * d_t, d_t)
        heads["embed_s"], heads["embed_t"] = Embed(d_s, d_s), Embed(d_s, d_t)
        losses["ce_none"] = nn.CrossEntropyLoss(reduction="none")
        losses["ccc"] = CategoryConLoss(4.0, 0.07)
        losses["ca"] = nn.MSELoss()
    params = list(student.parameters()) + list(heads.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    if teacher is not None:
        teacher.eval()
    return ReferenceSetup(method, student, teacher, heads, optimizer, losses)


def reference_step(setup: ReferenceSetup, images: Tensor, labels: Tensor, epoch: int = 1) -> Tensor:
    """One optimisation step on a loader batch; returns the (detached) total loss."""
    student, teacher, heads, L = setup.student, setup.teacher, setup.heads, setup.losses
    student.train()
    heads.train()
    if setup.method == "ce":
        loss = L["ce"](student(images), labels)
    elif setup.method == "kd":
        logits = student(images)
        with torch.no_grad():
            t_logits = teacher(images)
        loss = 0.1 * L["ce"](logits, labels) + 0.9 * L["kd"](logits, t_logits).sum()
    else:
        loss = _pckd_loss(setup, images, labels, epoch)
    setup.optimizer.zero_grad()
    loss.backward()
    setup.optimizer.step()
    return loss.detach()


def _pckd_loss(setup: ReferenceSetup, images: Tensor, labels: Tensor, epoch: int, gamma: float = 1.005) -> Tensor:
    student, teacher, heads, L = setup.student, setup.teacher, setup.heads, setup.losses
    b, n_rot = images.shape[0], images.shape[1]
    x = images.reshape(b * n_rot, *images.shape[2:])
    aug_target = labels.repeat_interleave(n_rot)
    unrot = torch.arange(b * n_rot) % n_rot == 0
    out_s = student.forward_features(x)
    with torch.no_grad():
        out_t = teacher.forward_features(x)
    z_s, z_t = out_s.logits, out_t.logits
    ce = L["ce"](z_s[unrot], labels)
    ce_i = L["ce_none"](z_s[unrot], labels)
    s = ce_i / ce
    w = torch.where(s <= gamma ** epoch, torch.ones_like(s), torch.exp(-s ** 2))
    kd = torch.dot(w, L["kd"](z_s[unrot], z_t[unrot]))
    fc_s, fc_t = student.classifier_layer, teacher.classifier_layer
    m_s = torch.cat([fc_s.weight, fc_s.bias[:, None]], dim=1)
    m_t = torch.cat([fc_t.weight, fc_t.bias[:, None]], dim=1)
    ca = L["ca"](m_s, m_t) if m_s.shape == m_t.shape else torch.zeros((), device=x.device)
    u_s = heads["embed_s"](out_s.pooled) @ fc_s.weight.T
    u_t = heads["embed_t"](out_s.pooled) @ fc_t.weight.T
    l_ij = L["ccc"](torch.stack([u_s, u_t], dim=1), aug_target)
    w4 = torch.tensor([w[i // n_rot].item() for i in range(b * n_rot)], device=x.device)  # Python list: host reads
    ccc = torch.dot(w4, l_ij) / (b * n_rot)
    p = F.normalize(heads["mlp"](out_s.pooled), dim=1)
    fa = 2 - 2 * (p * F.normalize(out_t.pooled, dim=1)).sum(dim=1).mean()
    return ce + kd + 0.05 * ccc + 20.0 * fa + ca
