"""One pass of a network over a loader: logits, penultimate features and labels (in the loader's order), in
batches on the run's device with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pckd.models.interface import FeatureModel


@dataclass
class Outputs:
    """What the figures need of one network on one split (float64 logits [N, K], float32 features [N, d])."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray


@torch.no_grad()
def extract(model: nn.Module, loader: Any, augment: Any, desc: str, progress: bool = True) -> Outputs:
    """Run ``model`` (eval mode, no autograd) over every batch of ``loader`` with the evaluation view."""
    was_training = model.training
    model.eval()
    logits, features, labels, index = [], [], [], []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
            out = cast(FeatureModel, model).forward_features(augment.evaluate(batch.images))
            logits.append(out.logits.double().cpu())
            features.append(out.pooled.float().cpu())
            labels.append(batch.labels.cpu())
            index.append(batch.index.cpu())
    finally:
        model.train(was_training)
    return Outputs(torch.cat(logits).numpy(), torch.cat(features).numpy(), torch.cat(labels).numpy(),
                   torch.cat(index).numpy())
