"""MLD's strong view on the device: the released RandAugment (2 of 14 ops, random magnitudes) then Cutout.

Jin et al.'s ``mdistiller/dataset/cifar100.py`` (Jin-Ying/Multi-Level-Logit-Distillation) builds the strong view
per image with PIL: crop + flip, then ``RandAugment(2, 10)``: ``random.choices`` picks 2 ops (with replacement)
from ``augment_list()``, each with a magnitude uniform in its own range (the ``m`` argument is unused), then
``Cutout`` with a side of ``random() * 0.5`` of the width. This module does the same on whole uint8 batches
[B,3,H,W] on the batch's device, each image with its own ops, magnitudes and cut-out, and the same pixel
arithmetic as the PIL functions the released code calls (Pillow's LUTs, its float32 blend with truncation,
its nearest-neighbour affine sampling at pixel centres, its inclusive rectangle), so that for given
parameters an image comes out as PIL would make it (tests/data/test_randaugment.py compares op by op).

Images are grouped by op (one host sync per round for the group sizes): each op runs once per round on the
images that drew it. Random draws use torch's global generator of the images' device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# (name, low, high) in the order of the released ``augment_list()``; the magnitude is low + (high - low) * U.
OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0),
    ("Identity", 0.0, 1.0),
    ("Posterize", 4.0, 8.0),
    ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
)
OP_NAMES = tuple(name for name, _, _ in OPS)
N_OPS_PER_IMAGE = 2  # RandAugment(2, 10)
CUTOUT_MAX = 0.5  # cutout_val = random.random() * 0.5 (a fraction of the width)
CUTOUT_FILL = (125, 123, 114)  # the released CutoutAbs colour


# ---- pixel arithmetic shared by the ops ------------------------------------------------------------------
def _gray(images: Tensor) -> Tensor:
    """Pillow's RGB -> L conversion, integer ITU-R 601-2 weights with rounding: [n,1,H,W] int32."""
    x = images.to(torch.int32)
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16


def blend(degenerate: Tensor, images: Tensor, alpha: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, image, alpha)`` for 0 <= alpha <= 1: ``deg + alpha * (img - deg)`` in
    float32, truncated to uint8. ``alpha`` [n] (one factor per image); ``degenerate`` broadcasts to ``images``."""
    a = alpha.to(torch.float32).view(-1, 1, 1, 1)
    deg = degenerate.to(torch.float32)
    out = deg + a * (images.to(torch.float32) - deg)
    return out.clamp_(0, 255).to(torch.uint8)  # in [0, 255] already; the cast truncates as C does


def _lut(images: Tensor, table: Tensor) -> Tensor:
    """Apply a per-(image, channel) lookup table [n,3,256] to uint8 images [n,3,H,W]."""
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w).to(torch.int64)
    return table.gather(2, flat).reshape(n, c, h, w).to(torch.uint8)


def affine_nearest(images: Tensor, matrix: Tensor) -> Tensor:
    """Pillow's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))`` with NEAREST resampling and black fill.

    Output pixel (x, y) takes input pixel (floor(a(x+.5) + b(y+.5) + c), floor(d(x+.5) + e(y+.5) + f)), or 0 where
    that lies outside the image. ``matrix`` [n,6] float64, one per image.
    """
    n, c, h, w = images.shape
    dev = images.device
    xs = torch.arange(w, device=dev, dtype=torch.float64).add_(0.5).view(1, 1, w)
    ys = torch.arange(h, device=dev, dtype=torch.float64).add_(0.5).view(1, h, 1)
    m = matrix.to(torch.float64).view(n, 6, 1, 1)
    x_in = torch.floor(m[:, 0] * xs + m[:, 1] * ys + m[:, 2]).to(torch.int64)  # [n,H,W]
    y_in = torch.floor(m[:, 3] * xs + m[:, 4] * ys + m[:, 5]).to(torch.int64)
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    flat = (y_in.clamp(0, h - 1) * w + x_in.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = images.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)
    return out * inside.unsqueeze(1).to(torch.uint8)


def _matrix(n: int, device: torch.device, **entries: Tensor | float) -> Tensor:
    """[n,6] float64 affine matrices (a, b, c, d, e, f), identity except the given entries."""
    m = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device).repeat(n, 1)
    for key, value in entries.items():
        m[:, "abcdef".index(key)] = value if isinstance(value, float) else value.to(torch.float64)
    return m


# ---- the 14 ops: (uint8 [n,3,H,W], magnitude [n] float64) -> uint8 [n,3,H,W] -----------------------------
def auto_contrast(images: Tensor, v: Tensor) -> Tensor:
    """``ImageOps.autocontrast``: per channel, lut(i) = int(i * 255/(hi-lo) - lo * 255/(hi-lo)), clipped;
    identity for a channel with hi <= lo. The magnitude is unused."""
    n, c = images.shape[:2]
    flat = images.reshape(n, c, -1)
    lo = flat.amin(dim=2).to(torch.float64)
    hi = flat.amax(dim=2).to(torch.float64)
    span = hi - lo
    scale = torch.full_like(span, 255.0) / span.clamp_min(1.0)  # tensor / tensor: IEEE division as Python's
    offset = -lo * scale
    i = torch.arange(256, device=images.device, dtype=torch.float64)
    table = torch.trunc(i * scale.unsqueeze(2) + offset.unsqueeze(2)).clamp_(0, 255)
    table = torch.where((span > 0).unsqueeze(2), table, i.expand_as(table))
    return _lut(images, table.to(torch.int64))


def brightness(images: Tensor, v: Tensor) -> Tensor:
    """``ImageEnhance.Brightness(img).enhance(v)``: blend with black."""
    return blend(torch.zeros_like(images[:, :1]), images, v)


def color(images: Tensor, v: Tensor) -> Tensor:
    """``ImageEnhance.Color(img).enhance(v)``: blend with the image's grey (L) version."""
    return blend(_gray(images), images, v)


def contrast(images: Tensor, v: Tensor) -> Tensor:
    """``ImageEnhance.Contrast(img).enhance(v)``: blend with a flat grey at int(mean(L) + 0.5)."""
    mean = _gray(images).to(torch.float64).flatten(1).mean(dim=1)
    level = torch.floor(mean + 0.5).view(-1, 1, 1, 1)
    return blend(level, images, v)


def equalize(images: Tensor, v: Tensor) -> Tensor:
    """``ImageOps.equalize``: per channel, step = (pixels - count of the last used level) // 255 and
    lut(i) = (step // 2 + pixels below level i) // step; identity where step is 0. The magnitude is unused."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=images.device).scatter_add_(
        1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=images.device)
    last = torch.where(hist > 0, levels, -1).amax(dim=1, keepdim=True)  # highest level present
    step = (h * w - hist.gather(1, last)) // 255  # [n*c, 1]
    below = hist.cumsum(dim=1) - hist  # pixels strictly below each level
    table = ((step // 2 + below) // step.clamp_min(1)).clamp_(max=255)  # Image.point clips the LUT to 255
    table = torch.where(step > 0, table, levels.expand_as(table))
    return _lut(images, table.view(n, c, 256))


def identity(images: Tensor, v: Tensor) -> Tensor:
    """The released ``Identity``: the image unchanged."""
    return images


def posterize(images: Tensor, v: Tensor) -> Tensor:
    """``ImageOps.posterize(img, max(1, int(v)))``: keep the top ``bits`` bits of every channel."""
    bits = torch.floor(v).clamp_(1, 8).to(torch.int32).view(-1, 1, 1, 1)
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)
    return images & mask


def rotate(images: Tensor, v: Tensor) -> Tensor:
    """``img.rotate(v)``: ``v`` degrees counter-clockwise about the centre (w/2, h/2), nearest, black fill,
    through the affine matrix ``Image.rotate`` builds (cos/sin rounded to 15 decimals)."""
    n, _, h, w = images.shape
    angle = -torch.deg2rad(torch.remainder(v.to(torch.float64), 360.0))
    cos, sin = torch.round(torch.cos(angle), decimals=15), torch.round(torch.sin(angle), decimals=15)
    cx, cy = w / 2, h / 2
    # matrix[2], matrix[5] = transform(-cx, -cy) + (cx, cy), as in Image.rotate
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine_nearest(images, _matrix(n, images.device, a=cos, b=sin, c=c, d=-sin, e=cos, f=f))


def sharpness(images: Tensor, v: Tensor) -> Tensor:
    """``ImageEnhance.Sharpness(img).enhance(v)``: blend with ``ImageFilter.SMOOTH`` (3x3 kernel
    [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded), whose border pixels are the original ones."""
    h, w = images.shape[2:]
    if h < 3 or w < 3:
        return images.clone()  # no interior: the smoothed image is the image itself
    x = images.to(torch.int32)
    # the 3x3 window sums of the interior in integers (exact on every device; no TF32 convolution)
    summed = sum(x[:, :, 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    summed = summed + 4 * x[:, :, 1:-1, 1:-1]  # centre weight 5
    smooth = torch.div(summed * 2 + 13, 26, rounding_mode="floor").to(torch.uint8)
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return blend(degenerate, images, v)


def shear_x(images: Tensor, v: Tensor) -> Tensor:
    """``img.transform(size, AFFINE, (1, v, 0, 0, 1, 0))``: shear about the top-left corner (not the centre)."""
    return affine_nearest(images, _matrix(images.shape[0], images.device, b=v))


def shear_y(images: Tensor, v: Tensor) -> Tensor:
    """``img.transform(size, AFFINE, (1, 0, 0, v, 1, 0))``."""
    return affine_nearest(images, _matrix(images.shape[0], images.device, d=v))


def solarize(images: Tensor, v: Tensor) -> Tensor:
    """``ImageOps.solarize(img, v)``: invert every level >= v."""
    threshold = v.to(torch.float64).view(-1, 1, 1, 1)
    return torch.where(images.to(torch.float64) < threshold, images, 255 - images)


def translate_x(images: Tensor, v: Tensor) -> Tensor:
    """``img.transform(size, AFFINE, (1, 0, v * width, 0, 1, 0))``: content moves left by v * width."""
    return affine_nearest(images, _matrix(images.shape[0], images.device, c=v * images.shape[3]))


def translate_y(images: Tensor, v: Tensor) -> Tensor:
    """``img.transform(size, AFFINE, (1, 0, 0, 0, 1, v * height))``: content moves up by v * height."""
    return affine_nearest(images, _matrix(images.shape[0], images.device, f=v * images.shape[2]))


OP_FUNCTIONS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    auto_contrast, brightness, color, contrast, equalize, identity, posterize, rotate, sharpness, shear_x,
    shear_y, solarize, translate_x, translate_y,
)


def cutout(images: Tensor, size: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """The released ``Cutout``/``CutoutAbs``: a square of side ``size`` pixels [n] (float, no cut where <= 0)
    around the centre (cx, cy) [n], filled with (125, 123, 114).

    As the released code computes it: x0 = int(max(0, cx - size/2)), x1 = min(w, x0 + size), and PIL's
    rectangle fills columns x0 .. int(x1) inclusive (rows alike), clipped to the image.
    """
    _, c, h, w = images.shape
    dev = images.device
    half = size.to(torch.float64) / 2
    x0 = torch.floor(torch.clamp_min(cx.to(torch.float64) - half, 0.0))
    y0 = torch.floor(torch.clamp_min(cy.to(torch.float64) - half, 0.0))
    x1 = torch.floor(torch.clamp_max(x0 + size, float(w)))
    y1 = torch.floor(torch.clamp_max(y0 + size, float(h)))
    cols = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w)
    rows = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1)
    box = ((cols >= x0.view(-1, 1, 1)) & (cols <= x1.view(-1, 1, 1)) & (rows >= y0.view(-1, 1, 1))
           & (rows <= y1.view(-1, 1, 1)) & (size > 0).view(-1, 1, 1))
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=dev).view(1, c, 1, 1)
    return torch.where(box.unsqueeze(1), fill, images)


# ---- parameters and the whole strong view ----------------------------------------------------------------
@dataclass
class StrongParams:
    """Per-image random parameters of the strong view (all on the images' device).

    ops: int64 [n, 2] indices into :data:`OPS`, applied in column order. magnitudes: float64 [n, 2].
    cutout: float64 [n], the cut-out side as a fraction of the width. cx, cy: float64 [n], its centre in pixels.
    """

    ops: Tensor
    magnitudes: Tensor
    cutout: Tensor
    cx: Tensor
    cy: Tensor

    def rows(self, lo: int, hi: int) -> StrongParams:
        """The parameters of images ``lo .. hi-1`` (a rank's shard of a global batch)."""
        return StrongParams(self.ops[lo:hi], self.magnitudes[lo:hi], self.cutout[lo:hi], self.cx[lo:hi],
                            self.cy[lo:hi])


def draw_params(n: int, height: int, width: int, device: torch.device | str) -> StrongParams:
    """Random parameters as the released code draws them: 2 ops uniformly with replacement, each magnitude
    uniform in its op's range, cut-out fraction uniform in [0, 0.5), and the cut-out centre from
    ``np.random.uniform(w)``, i.e. ``uniform(low=w, high=1)``: uniform in (1, w] (not [0, w); kept as released).
    Draw order on the device's generator: ops, magnitudes, cut-out fraction, cx, cy."""
    ops = torch.randint(0, len(OPS), (n, N_OPS_PER_IMAGE), device=device)
    low = torch.tensor([lo for _, lo, _ in OPS], dtype=torch.float64, device=device)
    high = torch.tensor([hi for _, _, hi in OPS], dtype=torch.float64, device=device)
    u = torch.rand(n, N_OPS_PER_IMAGE, dtype=torch.float64, device=device)
    magnitudes = low[ops] + (high[ops] - low[ops]) * u
    frac = torch.rand(n, dtype=torch.float64, device=device) * CUTOUT_MAX
    cx = width + (1.0 - width) * torch.rand(n, dtype=torch.float64, device=device)
    cy = height + (1.0 - height) * torch.rand(n, dtype=torch.float64, device=device)
    return StrongParams(ops, magnitudes, frac, cx, cy)


def apply_op_round(images: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """Apply op ``ops[i]`` with magnitude ``magnitudes[i]`` to image i, running each op once on its group."""
    counts = torch.bincount(ops, minlength=len(OPS)).tolist()  # the one host sync of a round
    order = torch.argsort(ops, stable=True)
    out = images.clone()
    start = 0
    for k, count in enumerate(counts):
        if count and OP_FUNCTIONS[k] is not identity:
            idx = order[start:start + count]
            out.index_copy_(0, idx, OP_FUNCTIONS[k](images.index_select(0, idx), magnitudes.index_select(0, idx)))
        start += count
    return out


def randaugment_cutout(images: Tensor, params: StrongParams) -> Tensor:
    """The released ``RandAugment.__call__`` on uint8 [n,3,H,W]: the two ops in order, then Cutout."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(CUTOUT_FILL):
        raise ValueError(f"randaugment_cutout needs uint8 RGB batches [n,3,H,W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    for j in range(params.ops.shape[1]):
        images = apply_op_round(images, params.ops[:, j], params.magnitudes[:, j])
    return cutout(images, params.cutout * images.shape[3], params.cx, params.cy)
