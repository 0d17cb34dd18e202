"""Scene-wide input normalisation: computed once per scene, never per tile.

- ``meanstd``: ``(x - mean) / std`` on the raw values (the checkpoint's statistics). The
  default for uint8 data, where the statistics are on 0-255 as in every SegNeXt config.
- ``percentile``: a linear stretch of each band from its scene-wide low/high percentiles to
  0-255 (clipped), then ``(x - mean) / std``. The default for uint16, int and float data. The
  percentiles come from an overview when the scene has one, else from a fixed grid of windows,
  so every tile of a scene, and every run, sees the same scaling.

Masked input values are set to 0 after normalisation, i.e. to the training mean of their
band, so pixels next to nodata see neutral context instead of an artificial edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from rasterio.windows import Window

from ..errors import UserError
from .source import SceneSource

__all__ = ["Normalization", "NormalizationMethod", "compute_normalization", "sample_windows"]

NormalizationMethod = Literal["auto", "meanstd", "percentile"]

#: Percentiles of the scene-wide stretch of non-uint8 data.
STRETCH_PERCENTILES: tuple[float, float] = (2.0, 98.0)
#: Pixels read to estimate the percentiles (from an overview or a grid of windows).
SAMPLE_PIXELS = 1 << 20
SAMPLE_WINDOW = 256


@dataclass(frozen=True)
class Normalization:
    """Per-band affine normalisation, optionally preceded by a clipped 0-255 stretch.

    ``apply``: raw ``(C, h, w)`` array -> float32 ``(C, h, w)``:
    ``stretch``: ``y = clip((x - low) * 255 / (high - low), 0, 255)``; then ``(y - mean) / std``.
    """

    method: Literal["meanstd", "percentile"]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def apply(self, data: np.ndarray, band_valid: np.ndarray | None = None) -> np.ndarray:
        """Normalise ``data`` ``(C, h, w)``; values where ``band_valid`` is False become 0."""
        x = data.astype(np.float32, copy=True)
        c = x.shape[0]
        if self.method == "percentile":
            assert self.low is not None and self.high is not None
            low = np.asarray(self.low, np.float32).reshape(c, 1, 1)
            gain = np.asarray([255.0 / (h - lo) for lo, h in zip(self.low, self.high, strict=True)], np.float32)
            x -= low
            x *= gain.reshape(c, 1, 1)
            np.clip(x, 0.0, 255.0, out=x)
        x -= np.asarray(self.mean, np.float32).reshape(c, 1, 1)
        x *= np.asarray([1.0 / s for s in self.std], np.float32).reshape(c, 1, 1)
        if band_valid is not None:
            x[~band_valid] = 0.0
        return x

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"method": self.method}
        if self.low is not None and self.high is not None:
            d["low"] = [round(v, 6) for v in self.low]
            d["high"] = [round(v, 6) for v in self.high]
        return d


def sample_windows(height: int, width: int, size: int = SAMPLE_WINDOW, budget: int = SAMPLE_PIXELS) -> list[Window]:
    """A fixed, evenly spread grid of at most ``budget`` pixels of ``size``-px windows (deterministic)."""
    if height * width <= budget:
        return [Window(0, 0, width, height)]
    wh, ww = min(size, height), min(size, width)
    n = max(1, budget // (wh * ww))
    ny = max(1, min(math.ceil(height / wh), round(math.sqrt(n * height / width))))
    nx = max(1, min(math.ceil(width / ww), n // ny))
    ys = np.linspace(0, height - wh, ny).round().astype(int) if ny > 1 else [(height - wh) // 2]
    xs = np.linspace(0, width - ww, nx).round().astype(int) if nx > 1 else [(width - ww) // 2]
    return [Window(int(x), int(y), ww, wh) for y in ys for x in xs]


def _band_percentiles(source: SceneSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    info = source.info
    chunks: list[tuple[np.ndarray, np.ndarray | None]] = []
    if info.has_overviews and info.height * info.width > SAMPLE_PIXELS:
        f = math.sqrt(info.height * info.width / SAMPLE_PIXELS)
        shape = (max(1, round(info.height / f)), max(1, round(info.width / f)))
        chunks.append(source.read(Window(0, 0, info.width, info.height), out_shape=shape))
    else:
        chunks.extend(source.read(w) for w in sample_windows(info.height, info.width))
    lows, highs = [], []
    for b in range(len(info.bands)):
        values = [d[b][v[b]] if v is not None else d[b].ravel() for d, v in chunks]
        flat = np.concatenate(values).astype(np.float64) if values else np.empty(0)
        if flat.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(flat, STRETCH_PERCENTILES))
        if not hi > lo:
            hi = lo + 1.0
        lows.append(lo)
        highs.append(hi)
    return tuple(lows), tuple(highs)


def compute_normalization(
    source: SceneSource,
    mean: Sequence[float],
    std: Sequence[float],
    method: NormalizationMethod = "auto",
) -> Normalization:
    """Choose and compute the scene-wide normalisation (reads at most ~1 MPix per band).

    Args:
        source: the scene.
        mean, std: the model's per-band statistics on 0-255 data (one per selected band).
        method: ``auto`` (``meanstd`` for uint8, ``percentile`` otherwise), ``meanstd`` or ``percentile``.

    Raises:
        UserError: statistics that do not match the band count, or an unknown method.
    """
    n = len(source.info.bands)
    if len(mean) != n or len(std) != n:
        raise UserError(f"--bands: the model's mean/std have {len(mean)} value(s) but {n} band(s) are read")
    if method == "auto":
        method = "meanstd" if np.dtype(source.info.dtype) == np.uint8 else "percentile"
    if method == "meanstd":
        return Normalization("meanstd", tuple(map(float, mean)), tuple(map(float, std)))
    if method == "percentile":
        low, high = _band_percentiles(source)
        return Normalization("percentile", tuple(map(float, mean)), tuple(map(float, std)), low, high)
    raise UserError(f"--normalization: {method!r} is not one of auto, meanstd, percentile")
