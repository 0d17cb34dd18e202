"""Metadata that travels with a model: classes, palette, normalisation and bands."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ISAID_CLASSES", "ISAID_PALETTE", "ModelMeta", "default_palette"]

#: ImageNet statistics on 0-255 RGB, as in every SegNeXt config.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

ISAID_CLASSES: tuple[str, ...] = (
    "background",
    "ship",
    "store_tank",
    "baseball_diamond",
    "tennis_court",
    "basketball_court",
    "Ground_Track_Field",
    "Bridge",
    "Large_Vehicle",
    "Small_Vehicle",
    "Helicopter",
    "Swimming_pool",
    "Roundabout",
    "Soccer_ball_field",
    "plane",
    "Harbor",
)
ISAID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (0, 0, 63),
    (0, 63, 63),
    (0, 63, 0),
    (0, 63, 127),
    (0, 63, 191),
    (0, 63, 255),
    (0, 127, 63),
    (0, 127, 127),
    (0, 0, 127),
    (0, 0, 191),
    (0, 0, 255),
    (0, 191, 127),
    (0, 127, 191),
    (0, 127, 255),
    (0, 100, 155),
)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct, deterministic RGB colour per class (class 0 black)."""
    colours: list[tuple[int, int, int]] = [(0, 0, 0)]
    for i in range(1, num_classes):
        # golden-ratio hue walk, fixed saturation/value: readable on imagery
        h = (i * 0.618033988749895) % 1.0
        r, g, b = _hsv_to_rgb(h, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]


@dataclass
class ModelMeta:
    """What a checkpoint says about its model beyond the weights.

    ``mean``/``std`` are per band, in the units of the input raster scaled as
    ``bands_scale`` says (0-255 for 8-bit RGB). ``bands`` are 1-based raster band
    indexes to feed, in order.
    """

    variant: str = "segnext_t"
    num_classes: int = 150
    class_names: list[str] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bands: tuple[int, ...] = (1, 2, 3)
    nmf_rank: int = 16
    family: str = "segnext-geo"
    extra: dict[str, Any] = field(default_factory=dict)
    gsd_m: float | None = None
    gsd_note: str = ""

    def __post_init__(self) -> None:
        if self.gsd_m is not None:
            gsd = float(self.gsd_m)
            if not math.isfinite(gsd) or gsd <= 0:
                raise ValueError(f"gsd_m must be a positive number of metres or None, not {self.gsd_m!r}")
            self.gsd_m = gsd
        self.gsd_note = str(self.gsd_note or "")
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if not self.palette:
            self.palette = default_palette(self.num_classes)
        self.palette = [tuple(int(v) for v in c) for c in self.palette]  # type: ignore[misc]
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.bands = tuple(int(b) for b in self.bands)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["palette"] = [list(c) for c in self.palette]
        d["mean"], d["std"], d["bands"] = list(self.mean), list(self.std), list(self.bands)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
