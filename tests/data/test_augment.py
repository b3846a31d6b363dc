"""Batch augmentation against naive per-sample references with the same random parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pckd.data.augment import NORMALIZATION, BatchAugment, PreAugmented, crop_flip, rotated_crops

MEAN, STD = NORMALIZATION["cifar100"]


def _images(b: int = 8, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _normalised(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(-1, 3, 1, 1)
    std = torch.tensor(STD).view(-1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def _naive_crop(image: torch.Tensor, top: int, left: int, flip: bool, padding: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    out = F.pad(image, (padding,) * 4)[:, top : top + h, left : left + w]
    return out.flip(-1) if flip else out


@pytest.mark.parametrize("shape", [(32, 32), (20, 24)])
def test_crop_flip_matches_per_sample_slicing(shape):
    h, w = shape
    x = _images(16, h, w)
    g = torch.Generator().manual_seed(1)
    top, left = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    out = crop_flip(x, top, left, flip, padding=4)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(16):
        assert torch.equal(out[i], _naive_crop(x[i], int(top[i]), int(left[i]), bool(flip[i]), 4))
    # Offsets at the extremes show the zero padding.
    corner = crop_flip(x[:1], torch.tensor([0]), torch.tensor([0]), None, padding=4)
    assert corner[0, :, :4].sum() == 0 and corner[0, :, :, :4].sum() == 0
    assert torch.equal(corner[0, :, 4:, 4:], x[0, :, :-4, :-4])


def test_standard_uses_documented_draws_and_normalises():
    x = _images(64)
    aug = BatchAugment(MEAN, STD)
    torch.manual_seed(123)
    out = aug.standard(x)
    torch.manual_seed(123)  # redraw the same parameters in the documented order
    flip = torch.rand(64) < 0.5
    top, left = torch.randint(0, 9, (64,)), torch.randint(0, 9, (64,))
    expected = torch.stack([_naive_crop(x[i], int(top[i]), int(left[i]), bool(flip[i]), 4) for i in range(64)])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _normalised(expected), rtol=0, atol=1e-5)
    assert 0 < int(flip.sum()) < 64 and len(set(top.tolist())) > 1


def test_rng_state_restore_reproduces_exactly():
    x = _images(32)
    aug = BatchAugment(MEAN, STD)
    state = torch.get_rng_state()
    first = (aug.standard(x), aug.rotated_views(x))
    torch.set_rng_state(state)
    second = (aug.standard(x), aug.rotated_views(x))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(aug.standard(x), first[0])


def test_flip_is_a_horizontal_mirror_and_evaluate_only_normalises():
    x = _images(64)
    aug = BatchAugment(MEAN, STD, crop_padding=0)
    out = aug.standard(x)
    plain, mirrored = _normalised(x), _normalised(x.flip(-1))
    is_plain = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_mirror = (out - mirrored).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert torch.all(is_plain ^ is_mirror) and 10 < int(is_mirror.sum()) < 54
    torch.testing.assert_close(aug.evaluate(x), plain, rtol=0, atol=1e-5)
    assert torch.equal(BatchAugment(MEAN, STD, crop_padding=0, flip=False).standard(x), aug.evaluate(x))


def test_rotated_views_without_crop_are_rotations_of_one_flip():
    b, n = 16, 4
    x = _images(b)
    out = BatchAugment(MEAN, STD, crop_padding=0).rotated_views(x, n)
    assert out.shape == (n * b, 3, 32, 32)
    flips = []
    for i in range(b):
        copy0 = out[n * i]
        flipped = (copy0 - _normalised(x[i : i + 1].flip(-1))[0]).abs().max() < 1e-5
        flips.append(bool(flipped))
        source = x[i].flip(-1) if flipped else x[i]
        for j in range(n):
            want = _normalised(torch.rot90(source, j, dims=(1, 2)).unsqueeze(0))[0]
            torch.testing.assert_close(out[n * i + j], want, rtol=0, atol=1e-5)
    assert any(flips) and not all(flips)


def test_rotation_is_counter_clockwise():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[0, :, 0, 7] = 255  # top-right corner
    views = rotated_crops(x, None, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 4, 0)
    corners = [(0, 7), (0, 0), (7, 0), (7, 7)]  # 0, 90, 180, 270 degrees CCW
    for j, (r, c) in enumerate(corners):
        assert views[j, 0, r, c] == 255 and int(views[j, 0].sum()) == 255


def test_rotated_views_crop_each_copy_independently():
    b, n = 32, 4
    x = _images(b)
    torch.manual_seed(7)
    out = BatchAugment(MEAN, STD).rotated_views(x, n)
    torch.manual_seed(7)
    flip = torch.rand(b) < 0.5
    top, left = torch.randint(0, 9, (n * b,)), torch.randint(0, 9, (n * b,))
    for i in range(b):
        source = x[i].flip(-1) if flip[i] else x[i]
        for j in range(n):
            k = n * i + j
            want = _naive_crop(torch.rot90(source, j, dims=(1, 2)), int(top[k]), int(left[k]), False, 4)
            torch.testing.assert_close(out[k], _normalised(want.unsqueeze(0))[0], rtol=0, atol=1e-5)
    per_image = torch.stack([top, left], 1).view(b, n, 2)
    assert (per_image != per_image[:, :1]).any(dim=(1, 2)).sum() > b // 2


def test_pre_augmented_only_rotates():
    x = torch.randn(3, 3, 8, 8)
    aug = PreAugmented()
    assert aug.standard(x) is x and aug.evaluate(x) is x
    views = aug.rotated_views(x, 4)
    assert views.shape == (12, 3, 8, 8)
    assert torch.equal(views[4 * 2 + 3], torch.rot90(x[2], 3, dims=(1, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference_and_stays_on_device():
    x = _images(64).cuda()
    aug = BatchAugment(MEAN, STD)
    torch.cuda.manual_seed(5)
    out = aug.rotated_views(x)
    assert out.device == x.device
    torch.cuda.manual_seed(5)
    flip = torch.rand(64, device="cuda") < 0.5
    top = torch.randint(0, 9, (256,), device="cuda")
    left = torch.randint(0, 9, (256,), device="cuda")
    ref = rotated_crops(x.cpu(), flip.cpu(), top.cpu(), left.cpu(), 4, 4)
    torch.testing.assert_close(out.cpu(), _normalised(ref), rtol=0, atol=1e-5)


def test_rotate_copies_order_is_image_major():
    """PreAugmented's rotated views: row n*i + j is image i rotated by j*90 degrees, for several images."""
    from pckd.data.augment import rotate_copies

    x = _images(5, 6, 6)
    out = rotate_copies(x, 4)
    assert out.shape == (20, 3, 6, 6)
    for i in range(5):
        for j in range(4):
            assert torch.equal(out[4 * i + j], torch.rot90(x[i], j, dims=(1, 2)))


def test_flip_where_mirrors_exactly_the_flagged_images():
    from pckd.data.augment import flip_where

    x = _images(6)
    flags = torch.tensor([True, False, False, True, True, False])
    out = flip_where(x, flags)
    for i in range(6):
        assert torch.equal(out[i], x[i].flip(-1) if flags[i] else x[i])
    floats = x.float()
    assert torch.equal(flip_where(floats, flags), out.float())
