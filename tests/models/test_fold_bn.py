"""Folding a frozen teacher's BatchNorms into its convolutions changes how, not what, it computes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pckd.models import create_model
from pckd.models.fold_bn import fold_batchnorm
from pckd.models.interface import FeatureOutput

ZOO = ["resnet8", "resnet32x4", "ResNet50", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"]


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as a trained network has."""
    gen = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
            module.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=gen))
            module.bias.data.copy_(0.2 * torch.randn(n, generator=gen))
    return model.eval()


def _all_outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        out = model.forward_features(x)
    return [*out.stages, out.pooled, out.logits]


@pytest.mark.parametrize("arch", ZOO)
def test_folded_zoo_model_matches_batchnorm_arithmetic(arch: str) -> None:
    torch.manual_seed(0)
    model = _trained_like(create_model(arch, 10))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    folded, report = fold_batchnorm(model, torch.randn(2, 3, 32, 32))
    assert report.folded > 0 and report.max_rel_diff < 1e-4
    # Fresh inputs (not the probe): every stage, the pooled feature and the logits agree with the unfolded
    # network evaluated in float64, as closely as the unfolded float32 network does.
    x = torch.randn(5, 3, 32, 32)
    exact = _all_outputs(model.double(), x.double())
    model.float()
    for got, plain, want in zip(_all_outputs(folded, x), _all_outputs(model, x), exact):
        scale = want.abs().max()
        assert float((got.double() - want).abs().max() / scale) < 1e-5
        assert float((plain.double() - want).abs().max() / scale) < 1e-5
    # the original is untouched; the copy has fewer BatchNorms and no trainable parameters
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == count - report.folded == report.remaining
    assert not any(p.requires_grad for p in folded.parameters())


def test_wrn_keeps_the_stem_batchnorm_whose_conv_output_is_a_stage() -> None:
    """WRN returns its stem convolution's raw output as stage 0 and adds it to a residual: that pair is left,
    each block's conv -> bn2 pair is folded."""
    model = _trained_like(create_model("wrn_16_2", 10))
    folded, report = fold_batchnorm(model, torch.randn(2, 3, 32, 32))
    assert report.folded == 6 and report.remaining == 7  # 6 blocks x bn2 folded; 6 x bn1 + the final bn left
    x = torch.randn(3, 3, 32, 32)
    for got, want in zip(_all_outputs(folded, x), _all_outputs(model, x)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


class _ResidualReadsConvOutput(nn.Module):
    """conv1's output goes through bn1 *and* straight into a residual sum: folding bn1 would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.shared = nn.BatchNorm2d(4)  # called on two different convolutions' outputs: never folded
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.conv4 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        a = self.conv1(x)
        b = torch.relu(self.bn1(a)) + a
        c = torch.relu(self.bn2(self.conv2(b)))
        d = self.shared(self.conv3(c)) + self.shared(self.conv4(c))
        pooled = d.mean((2, 3))
        return FeatureOutput([a, d], pooled, self.fc(pooled))


def test_a_pair_whose_conv_output_is_read_elsewhere_is_left_unfolded() -> None:
    torch.manual_seed(0)
    model = _trained_like(_ResidualReadsConvOutput())
    folded, report = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert report.folded == 1 and isinstance(folded.bn2, nn.Identity)
    assert isinstance(folded.bn1, nn.BatchNorm2d) and isinstance(folded.shared, nn.BatchNorm2d)
    x = torch.randn(4, 3, 8, 8)
    for got, want in zip(_all_outputs(folded, x), _all_outputs(model, x)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_folding_by_hand_equals_the_formula() -> None:
    """One conv + bn pair against the textbook formula: w' = w * g / sqrt(v + eps), b' = (b - m) g / sqrt(v + eps) + beta."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1, bias=True)
            self.bn = nn.BatchNorm2d(3, eps=1e-3)
            self.fc = nn.Linear(3, 2)

        def forward_features(self, x: Tensor) -> FeatureOutput:
            y = self.bn(self.conv(x))
            pooled = y.mean((2, 3))
            return FeatureOutput([y], pooled, self.fc(pooled))

    model = _trained_like(Tiny())
    folded, report = fold_batchnorm(model, torch.randn(1, 2, 2, 2))
    assert report.folded == 1
    g, beta, m, v = (t.detach().double() for t in (model.bn.weight, model.bn.bias, model.bn.running_mean,
                                                   model.bn.running_var))
    scale = g / torch.sqrt(v + 1e-3)
    w = model.conv.weight.detach().double() * scale[:, None, None, None]
    b = (model.conv.bias.detach().double() - m) * scale + beta
    assert torch.allclose(folded.conv.weight.double(), w, atol=1e-6)
    assert torch.allclose(folded.conv.bias.double(), b, atol=1e-6)
