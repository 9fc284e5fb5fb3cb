"""Seeded image corruptions that stand in for input drift: sensor noise, defocus, occlusion.

Pure numpy functions of ``[N, C, H, W]`` float images in [0, 1]: the same images, seed
and severity always give the same output, and the output keeps the shape, the dtype
and the [0, 1] range. No torch here, so a benchmark can use them without a model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

Corruption = Literal["noise", "blur", "occlusion"]
CORRUPTIONS: tuple[Corruption, ...] = ("noise", "blur", "occlusion")

Images = NDArray[np.float32]


def gaussian_noise(images: Images, rng: np.random.Generator, *, severity: float = 1.0) -> Images:
    """Additive gaussian noise of standard deviation ``0.35 * severity``, clipped to [0, 1]."""
    noise = rng.normal(0.0, 0.35 * severity, size=images.shape)
    return np.clip(images + noise, 0.0, 1.0).astype(np.float32)


def blur(images: Images, *, severity: float = 1.0) -> Images:
    """``round(2 * severity)`` passes (at least one) of a 3x3 box blur over the last two axes, edges replicated."""
    out = images.astype(np.float32)
    height, width = images.shape[-2:]
    for _ in range(max(1, round(2 * severity))):
        padded = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
        out = sum(
            (padded[..., dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)),
            start=np.zeros_like(out),
        )
        out /= 9.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def occlusion(images: Images, rng: np.random.Generator, *, severity: float = 1.0) -> Images:
    """One square patch per image, side ``height * 0.5 * severity`` (at least 1), set to full intensity."""
    out = images.astype(np.float32, copy=True)
    height, width = images.shape[-2:]
    side = int(np.clip(round(height * 0.5 * severity), 1, min(height, width)))
    tops = rng.integers(0, height - side + 1, size=len(images))
    lefts = rng.integers(0, width - side + 1, size=len(images))
    for index, (top, left) in enumerate(zip(tops, lefts, strict=True)):
        out[index, ..., top : top + side, left : left + side] = 1.0
    return out


def corrupt(
    images: Images, *, seed: int, severity: float = 1.0, kinds: tuple[Corruption, ...] = CORRUPTIONS
) -> tuple[Images, list[Corruption]]:
    """Each image gets one corruption drawn from ``kinds``; returns the images and the kind applied to each."""
    if images.ndim < 3:
        raise ValueError(f"images must be [N, ..., H, W], got shape {images.shape}")
    if not kinds:
        raise ValueError("kinds must name at least one corruption")
    if severity <= 0:
        raise ValueError(f"severity must be positive, got {severity}")
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(kinds), size=len(images))
    out = np.clip(images, 0.0, 1.0).astype(np.float32, copy=True)
    for position, kind in enumerate(kinds):
        rows = np.flatnonzero(chosen == position)
        if not len(rows):
            continue
        if kind == "noise":
            out[rows] = gaussian_noise(out[rows], rng, severity=severity)
        elif kind == "blur":
            out[rows] = blur(out[rows], severity=severity)
        else:
            out[rows] = occlusion(out[rows], rng, severity=severity)
    return out, [kinds[position] for position in chosen]
