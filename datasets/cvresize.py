"""OpenCV's ``cv2.resize`` as the reference loaders call it, reproduced in torch (no OpenCV dependency).

The ``adapmtl`` protocol resizes its inputs as the AdapMTL reference does, and that reference (like the
AdaShare and DiSparse loaders it copies) calls ``cv2.resize`` of OpenCV 4.5.1 (``opencv-python==4.5.1.48``
in its ``environment.yml``). Three of its code paths matter; the first and the last are reproduced exactly:

- **INTER_LINEAR on uint8** (:func:`resize_linear` on a uint8 tensor; NYU-v2's image, read by ``cv2.imread``
  and resized before it becomes float). Half-pixel centres: a destination index d samples the source at
  f = (d + ½)·(src/dst) − ½, computed in double and stored as float32. Horizontally f is clamped to the
  image (f < 0 → the first pixel, f ≥ src − 1 → the last); vertically it is not: the two source rows are
  clipped to the image but the weights stay as computed. The weights 1 − α and α (float32) become 11-bit
  fixed point, round-half-even(w · 2048). The horizontal pass sums exactly in integers,
  R = p₀·a₀ + p₁·a₁; the vertical pass is OpenCV's SIMD formula, which 4.5.1 applies to every element:
  out = ((((R₀ >> 4)·b₀) >> 16) + (((R₁ >> 4)·b₁) >> 16) + 2) >> 2, saturated to 0..255. It truncates twice
  before it rounds, so it differs from round(bilinear) by up to one grey level.
- **INTER_LINEAR on float32** (:func:`resize_linear` on a float tensor; Taskonomy's image, which the reference
  turns into float32 before any resize): the same taps, but with the sample positions kept in double (what
  opencv-python 4.5.1.48 measurably does on float32 images, where its Intel IPP path takes over), float32
  weights and arithmetic, no rounding. Within 0.002 grey levels of OpenCV's on 621 random images (it sums
  in its own order); nothing rounds these values afterwards, so that is float noise.
- **INTER_NEAREST** (:func:`resize_nearest`, every label map): source index ⌊d · (1/(dst/src))⌋ in double,
  at most src − 1 (no half-pixel shift).

``tests/engine/test_protocols.py`` holds golden values worked out by hand from these rules. This module was
checked against ``cv2.resize`` of opencv-python-headless 4.5.1.48 on 1,581 random images (1–400 px; 1, 3
and 4 channels; up- and down-scaling, exact 2× both ways, the 480×640 → 321×321 test resize and training
scales of a 480×640 frame): INTER_LINEAR on uint8 and INTER_NEAREST equal on every pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
COEF_SCALE = 1 << COEF_BITS

__all__ = ["linear_taps", "nearest_index", "resize_linear", "resize_nearest"]


def linear_taps(
    src: int, dst: int, clamp: bool, float32_positions: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(first source index, second source index, weight of the first, weight of the second), float32
    weights, one entry per destination index: OpenCV's INTER_LINEAR taps along one axis.

    ``clamp``: OpenCV clamps the horizontal taps to the image (weight 1 on the border pixel); the vertical
    ones it leaves as computed and only clips the row indices. ``float32_positions``: the sample positions
    rounded to float32 (OpenCV's own code, uint8 images) or kept in double (IPP, float images).
    """
    if src < 1 or dst < 1:
        raise ValueError(f"resize from {src} to {dst} pixels: both must be at least 1")
    scale = 1.0 / (dst / src)
    f = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    if float32_positions:
        f = f.astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    alpha = (f - i0.astype(f.dtype)).astype(np.float32)
    if clamp:
        low, high = i0 < 0, i0 >= src - 1
        alpha[low | high] = 0.0
        i0[low] = 0
        i0[high] = src - 1
    i1 = np.clip(i0 + 1, 0, src - 1)
    i0 = np.clip(i0, 0, src - 1)
    w0 = (np.float32(1.0) - alpha).astype(np.float32)
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(w0), torch.from_numpy(alpha)


def _fixed(weights: Tensor) -> Tensor:
    """Float32 weights as OpenCV's 11-bit fixed point: round-half-even(w · 2048)."""
    return torch.round(weights * COEF_SCALE).to(torch.int64)


def resize_linear(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``cv2.resize(image, (W, H))`` (INTER_LINEAR) of a (C, H, W) or (H, W) tensor.

    uint8 in, uint8 out, with OpenCV's fixed-point arithmetic; any float dtype in, float32 out.
    """
    squeeze = image.ndim == 2
    x = image[None] if squeeze else image
    if x.ndim != 3:
        raise ValueError(
            f"resize_linear expects a (C, H, W) or (H, W) tensor, got shape {tuple(image.shape)}"
        )
    h, w = x.shape[-2:]
    out_h, out_w = size
    fixed_point = x.dtype == torch.uint8
    x0, x1, a0, a1 = linear_taps(w, out_w, clamp=True, float32_positions=fixed_point)
    y0, y1, b0, b1 = linear_taps(h, out_h, clamp=False, float32_positions=fixed_point)
    if fixed_point:
        src = x.to(torch.int64)
        rows = src[..., x0] * _fixed(a0) + src[..., x1] * _fixed(a1)
        fb0, fb1 = _fixed(b0)[:, None], _fixed(b1)[:, None]
        top = ((rows[:, y0] >> 4) * fb0) >> 16
        bottom = ((rows[:, y1] >> 4) * fb1) >> 16
        out = ((top + bottom + 2) >> 2).clamp_(0, 255).to(torch.uint8)
    elif x.dtype.is_floating_point:
        src = x.to(torch.float32)
        rows = src[..., x0] * a0 + src[..., x1] * a1
        out = rows[:, y0] * b0[:, None] + rows[:, y1] * b1[:, None]
    else:
        raise TypeError(f"resize_linear reproduces OpenCV for uint8 and float images, got {x.dtype}")
    return out[0] if squeeze else out


def nearest_index(src: int, dst: int) -> Tensor:
    """OpenCV's INTER_NEAREST source index of each destination index: ⌊d · (1/(dst/src))⌋, at most src − 1."""
    if src < 1 or dst < 1:
        raise ValueError(f"resize from {src} to {dst} pixels: both must be at least 1")
    step = 1.0 / (dst / src)
    index = np.floor(np.arange(dst, dtype=np.float64) * step).astype(np.int64)
    return torch.from_numpy(np.minimum(index, src - 1))


def resize_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``cv2.resize(x, (W, H), interpolation=cv2.INTER_NEAREST)`` of a (..., H, W) tensor of any dtype
    (values, 255 and NaN copied exactly)."""
    h, w = x.shape[-2:]
    rows, cols = nearest_index(h, size[0]), nearest_index(w, size[1])
    return x[..., rows, :][..., cols]
