"""Check what a PNG shows, not only that it is one: decoded size, and colours that must be drawn."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def read_png(path: Path) -> np.ndarray:
    """The decoded RGB pixels ``(H, W, 3)`` uint8 (fails unless the file is a PNG)."""
    with Image.open(path) as im:
        assert im.format == "PNG", f"{path}: a {im.format}, not a PNG"
        return np.asarray(im.convert("RGB"))


def colour_counts(rgb: np.ndarray) -> dict[tuple[int, int, int], int]:
    """How many pixels have each exact colour."""
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    return {(int(r), int(g), int(b)): int(n) for (r, g, b), n in zip(colours, counts, strict=True)}


def check_png(
    path: Path,
    *,
    width: tuple[int, int],
    height: tuple[int, int],
    colours: Iterable[tuple[int, int, int]] = (),
    min_pixels: int = 20,
    min_distinct: int = 50,
) -> np.ndarray:
    """Assert the PNG's size lies in ``width``/``height`` (inclusive ranges), that each of ``colours`` covers
    at least ``min_pixels`` exact pixels, and that it is a picture (``min_distinct`` colours), not a blank."""
    rgb = read_png(path)
    h, w = rgb.shape[:2]
    assert width[0] <= w <= width[1] and height[0] <= h <= height[1], f"{path}: {w} x {h}"
    counts = colour_counts(rgb)
    assert len(counts) >= min_distinct, f"{path}: only {len(counts)} colours"
    for c in colours:
        assert counts.get(tuple(c), 0) >= min_pixels, f"{path}: colour {tuple(c)} drawn on {counts.get(tuple(c), 0)} px"
    return rgb
