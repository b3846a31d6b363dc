"""Fold a frozen network's BatchNorm layers into the convolutions that feed them.

A teacher in eval mode computes ``bn(conv(x))`` with fixed statistics, an affine map that can be merged into
the convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``). The folded copy does the
same arithmetic with one memory pass less per layer. Which BatchNorm follows which convolution is found by
running the network once with hooks (no tracing, the user's code is not touched); a BatchNorm is a candidate
only when its input is exactly the output of a convolution. A convolution's output can also be read elsewhere
(returned as a stage feature, added to a residual), so the folded copy is checked against the original on the
probe batch, and a pair that changes the outputs is left unfolded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from pckd.models.interface import FeatureModel

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: BatchNorms folded and left, and the largest relative output change."""

    folded: int
    remaining: int
    max_rel_diff: float


def _conv_bn_pairs(model: nn.Module, probe: Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for each eval-mode BatchNorm whose input is exactly a convolution's output."""
    produced_by: dict[int, str] = {}  # id(output tensor) -> conv name; `keep` holds the tensors so ids stay unique
    keep: list[Tensor] = []
    conv_calls: dict[str, int] = {}
    fed_by: dict[str, list[str | None]] = {}  # bn name -> the conv that produced its input, per call
    handles = []

    def conv_hook(name: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            conv_calls[name] = conv_calls.get(name, 0) + 1
            produced_by[id(out)] = name
            keep.append(out)
        return hook

    def bn_hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_m: nn.Module, inp: tuple) -> None:
            fed_by.setdefault(name, []).append(produced_by.get(id(inp[0])))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _CONV):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, _BN):
            handles.append(module.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            cast(FeatureModel, model).forward_features(probe)
    finally:
        for handle in handles:
            handle.remove()
    pairs = [(calls[0], bn) for bn, calls in fed_by.items() if calls[0] is not None and len(set(calls)) == 1]
    convs = [c for c, _ in pairs]
    # a convolution called twice, or feeding two BatchNorms, serves more than one pair: leave it as it is
    return [(c, b) for c, b in pairs if convs.count(c) == 1 and conv_calls[c] == 1]


def _max_rel_diff(a: list[Tensor], b: list[Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        scale = x.abs().max().clamp_min(1e-12)
        worst = max(worst, float((x - y).abs().max() / scale))
    return worst


def _outputs(model: nn.Module, probe: Tensor) -> list[Tensor]:
    with torch.no_grad():
        out = cast(FeatureModel, model).forward_features(probe)
    return [*out.stages, out.pooled, out.logits]


def _fold_pair(model: nn.Module, conv_name: str, bn_name: str) -> tuple[Tensor, Tensor | None, nn.Module]:
    """Fold one pair in place; returns what :func:`_unfold_pair` needs to undo it."""
    conv = cast(nn.Conv2d, model.get_submodule(conv_name))
    bn = cast(nn.BatchNorm2d, model.get_submodule(bn_name))
    old = (conv.weight, conv.bias, bn)
    assert bn.running_mean is not None and bn.running_var is not None  # folding needs tracked statistics
    conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                                  bn.weight, bn.bias)
    _set_submodule(model, bn_name, nn.Identity())
    return old


def _unfold_pair(model: nn.Module, conv_name: str, bn_name: str, old: tuple) -> None:
    conv = model.get_submodule(conv_name)
    conv.weight, conv.bias = old[0], old[1]
    _set_submodule(model, bn_name, old[2])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def fold_batchnorm(model: nn.Module, probe: Tensor, tolerance: float = 1e-4) -> tuple[nn.Module, FoldReport]:
    """Return an eval-mode copy of ``model`` (a FeatureModel) with conv -> BatchNorm pairs folded.

    ``probe`` is an input batch of the right size (a few images suffice). The original is left untouched. The
    copy's stages, pooled features and logits must match the original's within ``tolerance`` (relative to each
    output's largest magnitude): when folding every pair at once breaks that (a convolution's output is also
    returned as a stage or added to a residual, as in WRN's stem), the pairs are tried one at a time and only
    those that keep the outputs are folded.
    """
    model = model.eval()
    pairs = _conv_bn_pairs(model, probe)
    reference = _outputs(model, probe)
    folded = copy.deepcopy(model).requires_grad_(False)
    for conv_name, bn_name in pairs:
        _fold_pair(folded, conv_name, bn_name)
    diff = _max_rel_diff(reference, _outputs(folded, probe)) if pairs else 0.0
    kept = len(pairs)
    if diff > tolerance:
        folded = copy.deepcopy(model).requires_grad_(False)
        kept = 0
        for conv_name, bn_name in pairs:
            old = _fold_pair(folded, conv_name, bn_name)
            if _max_rel_diff(reference, _outputs(folded, probe)) > tolerance:
                _unfold_pair(folded, conv_name, bn_name, old)
            else:
                kept += 1
        diff = _max_rel_diff(reference, _outputs(folded, probe))
    remaining = sum(isinstance(m, _BN) for m in folded.modules())
    return folded, FoldReport(kept, remaining, diff)
