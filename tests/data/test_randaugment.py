"""MLD's strong view: every batched device op against Pillow on each image (the calls the released
``mdistiller/dataset/cifar100.py`` makes), Cutout against PIL's rectangle, per-image draws, and the worker-side
transform's draw order against the released sequence of ``random`` / ``np.random`` calls."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from pckd.data import randaugment as ra
from pckd.data.augment import BatchAugment
from pckd.data.randaugment_pil import RandAugmentCutout

CIFAR = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _pil_reference(img: Image.Image, name: str, v: float) -> Image.Image:
    """The released op ``name`` written out with Pillow, independently of the module under test."""
    w, h = img.size
    affine = Image.Transform.AFFINE
    return {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Brightness": lambda: ImageEnhance.Brightness(img).enhance(v),
        "Color": lambda: ImageEnhance.Color(img).enhance(v),
        "Contrast": lambda: ImageEnhance.Contrast(img).enhance(v),
        "Equalize": lambda: ImageOps.equalize(img),
        "Identity": lambda: img,
        "Posterize": lambda: ImageOps.posterize(img, max(1, int(v))),
        "Rotate": lambda: img.rotate(v),
        "Sharpness": lambda: ImageEnhance.Sharpness(img).enhance(v),
        "ShearX": lambda: img.transform(img.size, affine, (1, v, 0, 0, 1, 0)),
        "ShearY": lambda: img.transform(img.size, affine, (1, 0, 0, v, 1, 0)),
        "Solarize": lambda: ImageOps.solarize(img, v),
        "TranslateX": lambda: img.transform(img.size, affine, (1, 0, v * w, 0, 1, 0)),
        "TranslateY": lambda: img.transform(img.size, affine, (1, 0, 0, 0, 1, v * h)),
    }[name]()


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def images(shared_data: Path) -> torch.Tensor:
    """96 real CIFAR-100 images, a third with the black band a padded crop leaves (autocontrast/equalize see it)."""
    from pckd.data.cifar import load_cifar

    with warnings.catch_warnings():  # the shared copy is not the canonical split (warned once per process)
        warnings.simplefilter("ignore", UserWarning)
        x, _, _ = load_cifar("cifar100", str(shared_data), True)
    out = x[:96].clone()
    out[::3, :, :4, :] = 0
    return out


@pytest.mark.parametrize("k", range(len(ra.OPS)), ids=ra.OP_NAMES)
def test_each_op_equals_pillow_per_image(images: torch.Tensor, k: int) -> None:
    name, low, high = ra.OPS[k]
    g = torch.Generator().manual_seed(k)
    v = low + (high - low) * torch.rand(images.shape[0], dtype=torch.float64, generator=g)
    out = ra.OP_FUNCTIONS[k](images, v)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(images.shape[0]):
        ref = _from_pil(_pil_reference(_to_pil(images[i]), name, float(v[i])))
        differ = (ref != out[i]).any(dim=0).float().mean().item()
        if name == "Rotate":
            # Nearest sampling of a rotation: a pixel whose source lies within rounding of a pixel edge may take
            # the neighbour (Pillow's C arithmetic and the device's differ in the last bits); at most 1%.
            assert differ <= 0.01, (i, differ)
        else:
            assert differ == 0.0, (name, i, float(v[i]))


def test_ops_that_change_images_do(images: torch.Tensor) -> None:
    v = torch.full((images.shape[0],), 0.5, dtype=torch.float64)
    for k, name in enumerate(ra.OP_NAMES):
        mag = v if name not in ("Posterize", "Rotate", "Solarize") else torch.full_like(v, {"Posterize": 4.0,
                                                                                           "Rotate": 20.0,
                                                                                           "Solarize": 128.0}[name])
        changed = not torch.equal(ra.OP_FUNCTIONS[k](images, mag), images)
        assert changed == (name != "Identity"), name


def _pil_cutout(img: Image.Image, fraction: float, cx: float, cy: float) -> Image.Image:
    """The released Cutout/CutoutAbs with the centre given (written out independently)."""
    v = fraction * img.size[0]
    w, h = img.size
    x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), (125, 123, 114))
    return out


def test_cutout_equals_pils_rectangle(images: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    n = images.shape[0]
    frac = torch.rand(n, dtype=torch.float64, generator=g) * 0.5
    frac[0] = 0.5 - 1e-9  # largest side, 16 pixels
    cx = 32 - 31 * torch.rand(n, dtype=torch.float64, generator=g)
    cy = 32 - 31 * torch.rand(n, dtype=torch.float64, generator=g)
    cx[1], cy[1] = 32.0, 32.0  # clipped at the bottom-right corner
    out = ra.cutout(images, frac * 32, cx, cy)
    for i in range(n):
        ref = _from_pil(_pil_cutout(_to_pil(images[i]), float(frac[i]), float(cx[i]), float(cy[i])))
        assert torch.equal(ref, out[i]), i
    # hand check: side 0.25 * 32 = 8 around (10.5, 20.5): columns 6..14, rows 16..24 inclusive (PIL's rectangle)
    one = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    cut = ra.cutout(one, torch.tensor([8.0], dtype=torch.float64), torch.tensor([10.5], dtype=torch.float64),
                    torch.tensor([20.5], dtype=torch.float64))
    filled = (cut[0, 0] == 125).nonzero()
    assert filled[:, 1].min() == 6 and filled[:, 1].max() == 14 and filled[:, 0].min() == 16
    assert filled[:, 0].max() == 24 and cut[0, :, 16, 6].tolist() == [125, 123, 114]
    # no cut at fraction 0
    assert torch.equal(ra.cutout(one, torch.zeros(1, dtype=torch.float64), torch.ones(1), torch.ones(1)), one)


def test_draws_are_per_image_and_in_the_released_ranges() -> None:
    torch.manual_seed(0)
    p = ra.draw_params(4096, 32, 32, "cpu")
    assert p.ops.shape == (4096, 2) and set(p.ops.unique().tolist()) == set(range(14))
    for k, (_, low, high) in enumerate(ra.OPS):
        mags = p.magnitudes[p.ops == k]
        assert mags.min() >= low and mags.max() < high + 1e-12
        assert mags.std() > 0
    assert p.cutout.min() >= 0 and p.cutout.max() < 0.5 and p.cutout.std() > 0
    # np.random.uniform(w) = uniform(low=w, high=1): centres in (1, 32]
    assert p.cx.min() > 1.0 and p.cx.max() <= 32.0 and p.cy.min() > 1.0
    assert abs(p.cx.mean().item() - 16.5) < 0.5
    # the same op twice is possible (random.choices draws with replacement)
    assert (p.ops[:, 0] == p.ops[:, 1]).any()


def test_strong_view_differs_per_image_and_is_reproducible() -> None:
    aug = BatchAugment(*CIFAR)
    same = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    batch = same.repeat(16, 1, 1, 1)
    torch.manual_seed(5)
    a = aug.strong(batch)
    torch.manual_seed(5)
    b = aug.strong(batch)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)  # the global RNG state fixes the view
    distinct = {tuple(a[i].flatten()[::37].tolist()) for i in range(16)}
    assert len(distinct) == 16  # every copy of the same image got its own crop, ops and cut-out
    assert not torch.equal(a, aug.standard(batch))


def test_strong_view_equals_crop_flip_then_ops_then_cutout() -> None:
    aug = BatchAugment(*CIFAR)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(9)
    got = aug.strong(x)
    torch.manual_seed(9)
    flip, top, left = aug._draw(8, 1, x.device)
    from pckd.data.augment import crop_flip

    cropped = crop_flip(x, top, left, flip, 4)
    params = ra.draw_params(8, 32, 32, "cpu")
    for i in range(8):
        img = _to_pil(cropped[i])
        for j in range(2):
            img = _pil_reference(img, ra.OP_NAMES[int(params.ops[i, j])], float(params.magnitudes[i, j]))
        img = _pil_cutout(img, float(params.cutout[i]), float(params.cx[i]), float(params.cy[i]))
        ref = aug.normalize(_from_pil(img)[None])[0]
        rotated = ra.OP_NAMES.index("Rotate") in params.ops[i].tolist()
        assert (ref != got[i]).any(dim=0).float().mean() <= (0.01 if rotated else 0.0), i


def test_shards_draw_the_global_batchs_strong_views() -> None:
    aug = BatchAugment(*CIFAR)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(1)
    whole = aug.strong(x)
    torch.manual_seed(1)
    second_half = aug.for_shard(4, 8).strong(x[4:])
    assert torch.equal(second_half, whole[4:])


def test_worker_transform_follows_the_released_draw_sequence() -> None:
    img = _to_pil(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(6)))
    for seed in range(20):
        random.seed(seed)
        np.random.seed(seed)
        got = RandAugmentCutout()(img)
        # the released RandAugment.__call__: choices(k=2), one random() per op, random() * 0.5, then the
        # centre from np.random.uniform(w), np.random.uniform(h)
        random.seed(seed)
        np.random.seed(seed)
        expected = img
        for name, low, high in random.choices(ra.OPS, k=2):
            expected = _pil_reference(expected, name, low + float(high - low) * random.random())
        fraction = random.random() * 0.5
        if fraction > 0:
            expected = _pil_cutout(expected, fraction, np.random.uniform(32), np.random.uniform(32))
        assert np.array_equal(np.array(got), np.array(expected)), seed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ops_on_cuda_equal_the_cpu_ops(images: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(7)
    for k, (name, low, high) in enumerate(ra.OPS):
        v = low + (high - low) * torch.rand(images.shape[0], dtype=torch.float64, generator=g)
        cpu = ra.OP_FUNCTIONS[k](images, v)
        cuda = ra.OP_FUNCTIONS[k](images.cuda(), v.cuda()).cpu()
        differ = (cpu != cuda).any(dim=1).float().mean().item()
        assert differ <= (0.01 if name == "Rotate" else 0.0), (name, differ)
    torch.manual_seed(0)
    out = BatchAugment(*CIFAR).strong(images.cuda())
    assert out.is_cuda and out.shape == images.shape and torch.isfinite(out).all()
