"""`pckd probe`: linear-probe transfer of a frozen backbone to another dataset (the PCKD paper's Table IV).

Protocol (CRD, Tian et al. ICLR 2020, Sec. 4.3, followed by PCKD): the network distilled on CIFAR-100 is frozen
and only a new ``nn.Linear(d, K_target)`` is trained on its penultimate features (``forward_features(x).pooled``)
of the target dataset (STL-10 / TinyImageNet downsized to 32x32), then tested. The backbone runs in eval mode
under no_grad, so neither its weights nor its BatchNorm statistics change.

By default (``probe.augment=false``) the features of the train and test sets are extracted once, without
augmentation, and the linear layer is trained on the cached features: the probe then takes seconds. With
``probe.augment=true`` a fresh training view (random crop + flip) is drawn every epoch and passed through the
frozen backbone batch by batch; the test features are always extracted once.

Optimisation: SGD (momentum, weight decay) on the mean cross-entropy, with a multistep schedule following
RepDistiller's rule: the rate of epoch ``e`` (from 1) is ``lr * lr_decay ** #{m in milestones: e > m}``. Each
epoch's order is :func:`pckd.data.loader.epoch_permutation` of the probe's seed. The defaults (see
:class:`ProbeConfig` and docs/transfer.md) are documented choices: CRD's exact probe settings are not given.

ImageFolder targets: the data layer's ImageNet transforms (RandomResizedCrop / Resize(size*256/224) +
CenterCrop) suit 224-pixel models, not a CIFAR backbone, so the probe replaces them with CIFAR-style ones:
``Resize(image_size)`` + ``CenterCrop(image_size)`` (identity for images already at 32x32; downsizes STL-10's
96x96 or TinyImageNet's 64x64 on the fly), plus padding-4 random crop and flip for augmented training views.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pckd.data import build_data
from pckd.data.augment import NORMALIZATION, BatchAugment
from pckd.data.imagefolder import ImageFolderLoader
from pckd.data.loader import epoch_permutation
from pckd.engine.build import build_network, resolve_device
from pckd.engine.checkpoint_config import load_checkpoint_config
from pckd.engine.metrics import topk_correct
from pckd.errors import UserError
from pckd.models import create_model, extract_state_dict
from pckd.models.interface import FeatureModel
from pckd.params import Choice, Settings, hp


class ProbeNormalization(Choice):
    """Which mean/std normalise the probe's images (``probe.normalization``)."""

    data = "data"  # the target data layer's own
    cifar100 = "cifar100"
    cifar10 = "cifar10"
    imagenet = "imagenet"


@dataclass
class ProbeConfig(Settings):
    """The probe's own settings, keys ``probe.*`` (data and device come from ``data.*`` / ``train.*``)."""

    epochs: int = hp(40, gt=0, doc="linear-classifier training epochs")
    batch_size: int = hp(64, gt=0, doc="training batch of the linear classifier")
    lr: float = hp(0.1, gt=0, doc="initial SGD learning rate")
    momentum: float = hp(0.9, ge=0, doc="SGD momentum")
    weight_decay: float = hp(0.0, ge=0, doc="on the linear layer; 0 as in Tian's CMC linear-probing code")
    milestones: list[int] = hp(factory=lambda: [15, 25, 35], ge=0, doc="epochs after which lr *= lr_decay")
    lr_decay: float = hp(0.1, gt=0, doc="multistep factor")
    augment: bool = hp(False, doc="redraw crop+flip training views every epoch (slower) instead of caching features")
    normalization: ProbeNormalization = hp(ProbeNormalization.data, doc="data (the target's own) or a named mean/std")
    seed: int = hp(0, ge=0, lt=2**32, doc="linear-layer init and per-epoch order")
    output_dir: str | None = hp(None, doc="where probe.json goes; default <checkpoint folder>/probe-<target>")


ProbeConfig.section = "probe"
_PROBE_KEY = "probe"


# ---- the linear classifier on features ------------------------------------------------------------------------
def make_linear(dim: int, num_classes: int, seed: int) -> nn.Linear:
    """A fresh ``nn.Linear(dim, num_classes)`` with PyTorch's default init drawn from a private generator (the
    global RNG is left alone)."""
    linear = nn.Linear(dim, num_classes)
    bound = 1.0 / math.sqrt(dim)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.empty(num_classes, dim).uniform_(-bound, bound, generator=generator))
        linear.bias.copy_(torch.empty(num_classes).uniform_(-bound, bound, generator=generator))
    return linear


def epoch_lr(cfg: ProbeConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (from 1): ``lr * lr_decay ** #{m: epoch > m}`` (RepDistiller's rule)."""
    return cfg.lr * cfg.lr_decay ** sum(epoch > m for m in cfg.milestones)


def sgd_epoch(linear: nn.Linear, optimizer: torch.optim.Optimizer, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """One pass of mean-cross-entropy SGD steps over ``(features, labels)`` batches; returns the mean loss."""
    linear.train()
    total, count = 0.0, 0
    for feats, labels in batches:
        loss = F.cross_entropy(linear(feats.float()), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * labels.shape[0]
        count += labels.shape[0]
    return total / max(count, 1)


def cached_batches(feats: Tensor, labels: Tensor, batch_size: int, seed: int, epoch: int
                   ) -> Iterable[tuple[Tensor, Tensor]]:
    """Epoch ``epoch``'s batches of cached features: order ``epoch_permutation(n, seed, epoch)``, last batch kept."""
    order = epoch_permutation(feats.shape[0], seed, epoch).to(feats.device)
    for start in range(0, feats.shape[0], batch_size):
        index = order[start:start + batch_size]
        yield feats.index_select(0, index), labels.index_select(0, index)


@torch.no_grad()
def score(linear: nn.Linear, feats: Tensor, labels: Tensor, chunk: int = 4096) -> dict[str, float]:
    """Top-1 / top-5 (percent) and mean CE of ``linear`` on features."""
    linear.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=feats.device)
    for start in range(0, feats.shape[0], chunk):
        logits = linear(feats[start:start + chunk].float())
        y = labels[start:start + chunk]
        totals[:2] += topk_correct(logits, y)
        totals[2] += F.cross_entropy(logits, y, reduction="sum")
    top1, top5, loss = (totals / max(feats.shape[0], 1)).tolist()
    return {"top1": 100.0 * top1, "top5": 100.0 * top5, "loss": loss}


def train_linear(
    linear: nn.Linear,
    cfg: ProbeConfig,
    train_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    test_feats: Tensor,
    test_labels: Tensor,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``linear`` for ``cfg.epochs`` epochs; ``train_batches(epoch)`` yields that epoch's (features, labels)
    batches. Evaluates on the test features after every epoch; returns one record per epoch."""
    optimizer = torch.optim.SGD(linear.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, cfg.epochs + 1), desc="probe", disable=not progress, leave=False)
    for epoch in bar:
        lr = epoch_lr(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss = sgd_epoch(linear, optimizer, train_batches(epoch))
        result = score(linear, test_feats, test_labels)
        history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, **result})
        bar.set_postfix(top1=f"{result['top1']:.2f}")
    return history


# ---- configuration ------------------------------------------------------------------------------------------
def _source_classes(arch: str, state: Any, weights: dict[str, Tensor]) -> int:
    """How many classes the checkpoint's classifier has (the backbone is rebuilt with that head, then unused)."""
    if isinstance(state, dict) and isinstance(state.get("num_classes"), int):
        return int(state["num_classes"])
    model = create_model(arch, 1, key="student.arch")
    layer = model.classifier_layer
    head = next((name for name, module in model.named_modules() if module is layer and name), None)
    if head is None or f"{head}.weight" not in weights:
        raise UserError(f"cannot find the classifier of '{arch}' in the checkpoint; check student.arch")
    return int(weights[f"{head}.weight"].shape[0])


# ---- features ----------------------------------------------------------------------------------------------
def _folder_transforms(image_size: int, mean: Any, std: Any) -> tuple[Callable, Callable]:
    """(plain, augmented) CIFAR-style transforms for ImageFolder targets (see the module docstring)."""
    from torchvision import transforms

    base = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    augmented = [transforms.RandomCrop(image_size, padding=4), transforms.RandomHorizontalFlip()]
    return transforms.Compose(base + tail), transforms.Compose(base + augmented + tail)


@torch.no_grad()
def extract(model: nn.Module, loader: Any, view: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Penultimate features and labels of every batch of ``loader`` (the model must be in eval mode)."""
    feats, labels = [], []
    for batch in loader:
        feats.append(cast(FeatureModel, model).forward_features(view(batch.images)).pooled.float())
        labels.append(batch.labels)
    if not feats:
        raise UserError("the probe's data has no images; check data.root and the data.* limits")
    return torch.cat(feats), torch.cat(labels)


def _rounded(record: dict[str, float]) -> dict[str, float]:
    """A probe epoch as written: accuracies to 0.01 points, losses to 4 decimals, the learning rate to 6 (float
    noise such as 37.50000000000001 says nothing)."""
    places = {"top1": 2, "top5": 2, "loss": 4, "train_loss": 4, "lr": 6}
    return {k: (round(v, places[k]) if k in places and isinstance(v, float) else v) for k, v in record.items()}


def _default_output_dir(checkpoint: Path, data_cfg: Any) -> Path:
    target = Path(data_cfg.root).expanduser().resolve().name if data_cfg.name == "imagefolder" else data_cfg.name
    return checkpoint.resolve().parent / f"probe-{target or 'data'}"


# ---- the command -------------------------------------------------------------------------------------------
def settings_file_overrides(path: str | None) -> list[str]:
    """The keys of a probe settings file (``configs/transfer/*.yaml``: nested ``data.*`` / ``probe.*`` keys) as
    ``key=value`` overrides, to go before the command line's; none without a file."""
    if path is None:
        return []
    import yaml

    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--config: cannot read '{path}' ({type(exc).__name__}); give a YAML file of data.* / "
                        "probe.* keys") from None
    if not isinstance(tree, dict):
        raise UserError(f"--config: '{path}' is not a mapping of data.* / probe.* keys")

    def flat(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [item for key, sub in value.items() for item in flat(f"{prefix}{key}.", sub)]
        return [f"{prefix[:-1]}={json.dumps(value)}"]

    return flat("", tree)


def run_probe(checkpoint: str, overrides: list[str]) -> dict[str, Any]:
    """Train and test a linear probe on the frozen penultimate features of ``checkpoint`` for the data set by
    ``data.*`` overrides; writes ``probe.json`` to ``probe.output_dir`` and returns its content.

    A pckd checkpoint knows its architecture; other files need ``student.arch=NAME``. ``probe.*`` keys set
    :class:`ProbeConfig`; ``train.device``, ``train.eval_batch_size`` and ``train.progress`` are honoured.
    """
    ckpt_path = Path(checkpoint)
    loaded = load_checkpoint_config(ckpt_path, overrides, keep=(), sections={_PROBE_KEY: ProbeConfig})
    cfg, state = loaded.cfg, loaded.state
    probe: ProbeConfig = cfg.probe
    source_data = (loaded.stored or {}).get("data", {}).get("name") if loaded.stored else None
    weights = extract_state_dict(state, source=f"'{ckpt_path}' (student.checkpoint)")
    n_source = _source_classes(cfg.student.arch, state, weights)
    del state, weights

    device = resolve_device(cfg.train.device)
    data = build_data(cfg.data, probe.batch_size, cfg.train.eval_batch_size, probe.seed, device)
    model = build_network(cfg.student, "student", n_source, data.input_size).to(device)
    model.eval().requires_grad_(False)  # frozen: no weight update, BatchNorm uses (and keeps) its running stats

    augment = data.augment
    if probe.normalization != ProbeNormalization.data and cfg.data.name != "imagefolder":
        augment = BatchAugment(*NORMALIZATION[str(probe.normalization)])
    if cfg.data.name == "imagefolder":
        mean, std = NORMALIZATION["imagenet" if probe.normalization == ProbeNormalization.data else str(probe.normalization)]
        plain, augmented = _folder_transforms(cfg.data.image_size, mean, std)
        for loader, transform in ((data.test, plain), (data.train, augmented if probe.augment else plain)):
            assert isinstance(loader, ImageFolderLoader)  # data.name=imagefolder builds these
            loader.dataset.transform = transform

    test_feats, test_labels = extract(model, data.test, augment.evaluate)
    if probe.augment:
        def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
            data.train.set_epoch(epoch)
            for batch in data.train:
                with torch.no_grad():
                    feats = cast(FeatureModel, model).forward_features(augment.standard(batch.images)).pooled.float()
                yield feats, batch.labels
        n_train = data.train_size
    else:
        data.train.set_epoch(0)
        train_feats, train_labels = extract(model, data.train, augment.evaluate)
        n_train = int(train_feats.shape[0])

        def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
            return cached_batches(train_feats, train_labels, probe.batch_size, probe.seed, epoch)

    dim = int(test_feats.shape[1])
    linear = make_linear(dim, data.num_classes, probe.seed).to(device)
    history = train_linear(linear, probe, batches, test_feats, test_labels, progress=cfg.train.progress)

    best = max(history, key=lambda r: r["top1"])
    history = [_rounded(record) for record in history]
    out_dir = Path(probe.output_dir) if probe.output_dir else _default_output_dir(ckpt_path, cfg.data)
    result = {
        "checkpoint": str(ckpt_path), "arch": cfg.student.arch, "source_data": source_data,
        "source_classes": n_source, "feature_dim": dim,
        "data": {"name": str(cfg.data.name), "root": cfg.data.root, "image_size": data.input_size,
                 "num_classes": data.num_classes, "train_size": n_train, "test_size": int(test_feats.shape[0])},
        "probe": {k: (str(v) if isinstance(v, Choice) else v) for k, v in dataclasses.asdict(probe).items()},
        "epochs": history,
        "best_top1": round(best["top1"], 2), "best_epoch": best["epoch"],
        "last_top1": history[-1]["top1"], "last_top5": history[-1]["top5"],
        "output_dir": str(out_dir),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write '{out_dir / 'probe.json'}' ({exc.strerror}); set probe.output_dir=...") from None
    return result
