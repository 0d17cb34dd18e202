"""Colour-coded label masks: RGB colours to class ids and back, and palette PNGs.

Used by the iSAID converter (``*_instance_color_RGB.png`` masks) and by any
dataset whose labels are stored as colours. Ids are ``uint8``; 255 is the
ignore index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IGNORE_INDEX", "ColourMapping", "ids_to_rgb", "palette_image", "rgb_to_ids", "save_palette_png"]

IGNORE_INDEX = 255
#: Colour given to the ignore index in palette PNGs (only for display; it never maps back to an id).
IGNORE_COLOUR: tuple[int, int, int] = (255, 255, 255)


@dataclass
class ColourMapping:
    """Result of :func:`rgb_to_ids`: the id mask and what did not match the palette.

    ``ids`` is ``(H, W)`` uint8; ``unknown_pixels`` counts pixels whose colour is
    not in the palette (they are set to ``fill``); ``unknown_colours`` maps each such
    RGB colour to its pixel count.
    """

    ids: np.ndarray
    unknown_pixels: int = 0
    unknown_colours: dict[tuple[int, int, int], int] = field(default_factory=dict)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 RGB -> ``(...)`` int32 ``0xRRGGBB`` codes."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def rgb_to_ids(rgb: np.ndarray, palette: Sequence[Sequence[int]], fill: int = 0) -> ColourMapping:
    """Map an ``(H, W, 3)`` uint8 colour mask to class ids by exact colour match.

    Colour ``palette[i]`` becomes id ``i``. Colours not in the palette become
    ``fill`` (0, as the mmseg iSAID converter does) and are counted.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB mask, got shape {rgb.shape}")
    codes = _pack(rgb)
    pal = _pack(np.asarray(palette, dtype=np.uint8).reshape(-1, 3))
    order = np.argsort(pal, kind="stable")
    sorted_pal = pal[order]
    pos = np.clip(np.searchsorted(sorted_pal, codes), 0, len(sorted_pal) - 1)
    known = sorted_pal[pos] == codes
    ids = np.where(known, order[pos], fill).astype(np.uint8)
    unknown_pixels = int(codes.size - np.count_nonzero(known))
    colours: dict[tuple[int, int, int], int] = {}
    if unknown_pixels:
        values, counts = np.unique(codes[~known], return_counts=True)
        colours = {
            (int(v >> 16) & 255, int(v >> 8) & 255, int(v) & 255): int(c) for v, c in zip(values, counts, strict=True)
        }
    return ColourMapping(ids, unknown_pixels, colours)


def ids_to_rgb(ids: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours; ids outside the palette (e.g. 255) become white."""
    lut = np.full((256, 3), IGNORE_COLOUR, dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut[: len(pal)] = pal
    return lut[ids.astype(np.uint8)]


def palette_image(ids: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A 'P'-mode PIL image of ``(H, W)`` uint8 ids carrying ``palette`` (ignore index shown white)."""
    flat = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    flat[: len(pal)] = pal
    flat[IGNORE_INDEX] = IGNORE_COLOUR
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(flat.reshape(-1).tolist())
    return img


def save_palette_png(ids: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> None:
    """Write ids as an 8-bit palette PNG (temp file next to ``path``, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        palette_image(ids, palette).save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
