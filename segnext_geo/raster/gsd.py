"""Ground sample distance: a scene's GSD, the ``--gsd`` decision, and exact resampling between grids.

1. :func:`scene_gsd` (:func:`raster_gsd` for a file): the ground size of a scene's pixels in metres at the scene centre,
   measured on the CRS's ellipsoid (geodesic distance across one pixel), so it is the true
   ground size in any CRS: for a projected CRS it is the pixel size times the unit factor
   divided by the projection's scale factor there (UTM: at most ~0.1 % from the nominal pixel
   size inside a zone; Web Mercator: the nominal size times cos(latitude)); for a geographic
   CRS the metres a pixel spans at the centre; ``None`` without a CRS.
2. :func:`parse_gsd` and :func:`plan_gsd`: ``--gsd auto|native|METRES`` and the model's GSD
   -> a :class:`GsdPlan` (resample or not, to which GSD, and why).
3. :class:`ResampleGrid`: the *model grid* over a scene region (the whole scene or an area's
   window): the same extent cut into ``round(size * scene_gsd / target_gsd)`` pixels per
   axis. It maps windows both ways and resamples arrays both ways: scene data to the model
   grid (before the model) and blended probabilities back to the scene grid (before the
   argmax).

Resampling (developer note). Both directions use one separable kernel: bilinear (a triangle
of half-width 1 source pixel), widened to the ratio of pixel sizes when it shrinks (an
antialiased average, as ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=True)`` does), with taps outside the region dropped and the
weights renormalised. A destination pixel ``u`` (of ``n_dst`` across the region) is centred
at source coordinate ``(2u + 1) * n_src / (2 * n_dst)``, computed from integers with one
rounding, and its taps are summed in a fixed order with element-wise float32 operations. So
the value of a pixel does not depend on the window it is computed in: resampling a window
gives exactly (bit for bit) the crop of resampling the whole region, whatever the tiling.
Validity masks go to the model grid by nearest neighbour (the scene pixel holding the model
pixel's centre).

How the pipeline uses it: build the tile grid on ``model_shape``; for each tile read
``scene_read_window(tile_window)`` from the scene, normalise it and fill invalid pixels
(as for native reads), then :meth:`ResampleGrid.to_model`; run and blend on the model grid;
for each scene window to write, take ``model_read_window(scene_window)`` of the blended
*sums and weight sums* and map both with :meth:`ResampleGrid.to_scene`, then divide (the map
is linear, so this is the weighted mean of the valid contributions), then the argmax; scene
pixels that are invalid in the scene itself stay nodata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError, ProjError
from rasterio.crs import CRS
from rasterio.windows import Window
from torch import Tensor

from ..errors import UserError
from .source import open_raster

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_UPSAMPLE",
    "GroundSampling",
    "GsdMode",
    "GsdPlan",
    "ResampleGrid",
    "axis_taps",
    "parse_gsd",
    "plan_gsd",
    "raster_gsd",
    "scene_gsd",
]

GsdMode = Literal["auto", "native"] | float
#: ``auto`` leaves a scene alone when its GSD is within this fraction of the model's.
DEFAULT_TOLERANCE = 0.1
_ANGULAR_UNITS = {"degree", "radian", "grad", "arc-second", "arc-minute", "microradian"}
#: The largest enlargement per axis ``--gsd`` accepts (a 10 m scene for a 0.3 m model would be 33x).
MAX_UPSAMPLE = 8.0


@dataclass(frozen=True)
class GroundSampling:
    """Ground size of a pixel in metres: ``x_m`` along rows (across columns), ``y_m`` along columns."""

    x_m: float
    y_m: float

    @property
    def mean(self) -> float:
        """The geometric mean ``sqrt(x_m * y_m)`` (the side of a square pixel of the same area)."""
        return math.sqrt(self.x_m * self.y_m)


def scene_gsd(crs: CRS | None, transform: Affine, width: int, height: int) -> GroundSampling | None:
    """The ground size of the pixels at the centre of a scene, in metres.

    Args:
        crs: the scene's CRS (``None``: unknown).
        transform: pixel -> CRS coordinates.
        width, height: the scene size in px.

    Returns:
        The geodesic length (on the CRS's ellipsoid) of one pixel step along each axis at the
        scene centre; for a CRS without an ellipsoid (an engineering CRS) the pixel size times
        the unit factor; ``None`` without a CRS.
    """
    if crs is None:
        return None
    proj = ProjCRS.from_user_input(crs.to_wkt())
    cx, cy = width / 2.0, height / 2.0
    try:
        geod = proj.get_geod()
        if geod is None or proj.geodetic_crs is None:
            raise CRSError("no ellipsoid")
        to_lonlat = Transformer.from_crs(proj, proj.geodetic_crs, always_xy=True)

        def length(dc: float, dr: float) -> float:
            x0, y0 = transform @ (cx - dc / 2, cy - dr / 2)
            x1, y1 = transform @ (cx + dc / 2, cy + dr / 2)
            (lon0, lon1), (lat0, lat1) = to_lonlat.transform([x0, x1], [y0, y1], errcheck=True)
            return float(geod.inv(lon0, lat0, lon1, lat1)[2])

        return GroundSampling(length(1.0, 0.0), length(0.0, 1.0))
    except (CRSError, ProjError):
        if proj.is_geographic or not proj.axis_info or proj.axis_info[0].unit_name in _ANGULAR_UNITS:
            return None
        factor = float(proj.axis_info[0].unit_conversion_factor)
        return GroundSampling(
            math.hypot(transform.a, transform.d) * factor, math.hypot(transform.b, transform.e) * factor
        )


def raster_gsd(path: str | Path) -> GroundSampling | None:
    """:func:`scene_gsd` of a raster file (for recording a training set's GSD).

    Raises:
        UserError: the file is missing or not a raster.
    """
    with open_raster(path) as src:
        return scene_gsd(src.crs, src.transform, src.width, src.height)


def parse_gsd(value: str | float | None) -> GsdMode:
    """``--gsd``: ``"auto"`` (or ``None``), ``"native"``, or a positive number of metres.

    Raises:
        UserError: anything else.
    """
    if value is None:
        return "auto"
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("m").strip()
        if text in ("auto", "native"):
            return "auto" if text == "auto" else "native"
        try:
            metres = float(text)
        except ValueError:
            raise UserError(f"--gsd: {value!r} is not auto, native or a ground sample distance in metres") from None
    else:
        metres = float(value)
    if not math.isfinite(metres) or metres <= 0:
        raise UserError(f"--gsd: {value!r} must be a positive number of metres")
    return metres


@dataclass(frozen=True)
class GsdPlan:
    """What ``--gsd`` decided for one scene.

    ``target_m``: the GSD the model sees (``None``: the scene's own, no resampling); ``scene``:
    the scene's GSD (``None`` when unknown); ``reason``: one line for the log and the report.
    """

    target_m: float | None
    scene: GroundSampling | None
    reason: str

    @property
    def resample(self) -> bool:
        return self.target_m is not None


def plan_gsd(
    mode: GsdMode,
    model_gsd: float | None,
    scene: GroundSampling | None,
    name: str,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GsdPlan:
    """Decide whether and where to resample a scene for the model.

    Args:
        mode: ``"native"`` (never resample), ``"auto"`` (resample to ``model_gsd`` when known and
            the scene differs from it by more than ``tolerance``) or a target GSD in metres
            (resample to it, unless the scene is within ``tolerance`` of it).
        model_gsd: the GSD of the model's training data in metres, or ``None`` when it varies or
            is unknown (then ``auto`` means native).
        scene: :func:`scene_gsd` of the scene.
        name: how messages name the scene.
        tolerance: the relative difference (of the mean GSDs) below which nothing is resampled.

    Raises:
        UserError: a target in metres for a scene whose GSD is unknown, or a target that would
            enlarge the scene more than :data:`MAX_UPSAMPLE` times per axis.
    """
    if mode == "native":
        return GsdPlan(None, scene, "--gsd native: predicting at the scene's own resolution")
    if mode == "auto":
        if model_gsd is None:
            return GsdPlan(
                None, scene, "the model's training GSD varies or is unknown: predicting at native resolution"
            )
        if scene is None:
            return GsdPlan(None, None, f"{name} has no CRS, so its GSD is unknown: predicting at native GSD")
        target = float(model_gsd)
    else:
        if scene is None:
            raise UserError(f"--gsd: {name} has no CRS, so its ground resolution is unknown; use --gsd native")
        target = float(mode)
    ratio = scene.mean / target
    if abs(ratio - 1.0) <= tolerance:
        return GsdPlan(None, scene, f"{name} is at {scene.mean:.3g} m, within {tolerance:.0%} of {target:.3g} m")
    if ratio > MAX_UPSAMPLE:
        raise UserError(
            f"--gsd: {name} is at {scene.mean:.3g} m; resampling it to {target:.3g} m would enlarge it "
            f"{ratio:.1f}x per side (at most {MAX_UPSAMPLE:g}x); use --gsd native or a coarser --gsd"
        )
    return GsdPlan(target, scene, f"{name} is at {scene.mean:.3g} m: resampling to {target:.3g} m ({ratio:.3g}x)")


def axis_taps(n_src: int, n_dst: int, dst_start: int, dst_stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Resampling taps along one axis: ``n_src`` source pixels and ``n_dst`` destination pixels over one extent.

    Args:
        n_src, n_dst: pixels across the region on the source and the destination grid.
        dst_start, dst_stop: the destination pixels wanted, ``[dst_start, dst_stop)``.

    Returns:
        ``(index, weight)``, both ``(n, taps)`` with ``n = dst_stop - dst_start``: ``index``
        (int64) are source pixels in ``[0, n_src)``, ``weight`` (float32) sum to 1 per row;
        unused taps have weight 0 and a valid index. ``taps`` depends only on
        ``n_src / n_dst``, and each row only on its own destination pixel.
    """
    s = max(1.0, n_src / n_dst)
    taps = math.ceil(2 * s) + 1
    u = np.arange(dst_start, dst_stop, dtype=np.int64)
    centre = ((2 * u + 1) * n_src).astype(np.float64) / float(2 * n_dst)
    first = np.floor(centre - s - 0.5).astype(np.int64) + 1  # first j with j + 0.5 > centre - s
    j = first[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(j + 0.5 - centre[:, None]) / s)
    w[(j < 0) | (j >= n_src)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(j, 0, n_src - 1), w.astype(np.float32)


def _nearest(n_src: int, n_dst: int, dst_start: int, dst_stop: int) -> np.ndarray:
    """The source pixel holding each destination pixel's centre, ``(n,)`` int64."""
    u = np.arange(dst_start, dst_stop, dtype=np.int64)
    return np.clip(((2 * u + 1) * n_src) // (2 * n_dst), 0, n_src - 1)


def _support(n_src: int, n_dst: int, dst_start: int, dst_stop: int) -> tuple[int, int]:
    """The source pixels ``[a, b)`` with a non-zero weight for destinations ``[dst_start, dst_stop)``."""
    if dst_stop <= dst_start:
        return 0, 0
    idx, w = axis_taps(n_src, n_dst, dst_start, dst_stop)
    used = idx[w > 0]
    near = _nearest(n_src, n_dst, dst_start, dst_stop)
    return int(min(used.min(), near.min())), int(max(used.max(), near.max())) + 1


def _resample_axis(x: Tensor, dim: int, index: np.ndarray, weight: np.ndarray) -> Tensor:
    """Apply taps along ``dim`` of ``x``: ``out[..., i, ...] = sum_k weight[i, k] * x[..., index[i, k], ...]``."""
    idx = torch.from_numpy(index).to(x.device)
    w = torch.from_numpy(weight).to(device=x.device, dtype=x.dtype)
    # gather along the first axis of a contiguous copy: whole rows are copied at once (gathering
    # along the last axis is element by element); the arithmetic is the same, element for element
    front = x.movedim(dim, 0).contiguous()
    shape = [idx.shape[0]] + [1] * (x.dim() - 1)
    out: Tensor | None = None
    for k in range(idx.shape[1]):
        term = front.index_select(0, idx[:, k]).mul_(w[:, k].reshape(shape))
        out = term if out is None else out.add_(term)
    assert out is not None
    return out.movedim(0, dim)


@dataclass(frozen=True)
class ResampleGrid:
    """The model grid over a region of the scene, and exact maps between the two grids.

    The region (scene pixels ``[row_off, row_off + height) x [col_off, col_off + width)``) and
    the model grid (``model_height x model_width`` px) cover the same ground. Scene windows are
    in absolute scene pixels; model windows in model-grid pixels ``[0, model_width)``.
    """

    col_off: int
    row_off: int
    width: int
    height: int
    model_width: int
    model_height: int

    @classmethod
    def create(cls, region: Window, scene: GroundSampling, target_m: float) -> ResampleGrid:
        """The model grid at ``target_m`` metres over ``region`` (an integer scene window)."""
        c, r, w, h = (int(v) for v in (region.col_off, region.row_off, region.width, region.height))
        mw = max(1, round(w * scene.x_m / target_m))
        mh = max(1, round(h * scene.y_m / target_m))
        return cls(c, r, w, h, mw, mh)

    @property
    def model_shape(self) -> tuple[int, int]:
        """``(model_height, model_width)``."""
        return self.model_height, self.model_width

    @property
    def scale(self) -> tuple[Fraction, Fraction]:
        """Model pixels per scene pixel ``(along x, along y)``, exact."""
        return Fraction(self.model_width, self.width), Fraction(self.model_height, self.height)

    def model_transform(self, scene_transform: Affine) -> Affine:
        """The model grid's pixel -> CRS transform."""
        return (
            scene_transform
            @ Affine.translation(self.col_off, self.row_off)
            @ Affine.scale(self.width / self.model_width, self.height / self.model_height)
        )

    def to_model_xy(self, x: float | Fraction, y: float | Fraction) -> tuple[Fraction, Fraction]:
        """Scene pixel coordinates (edges: pixel ``c`` spans ``[c, c+1]``) -> model pixel coordinates, exact."""
        sx, sy = self.scale
        return (Fraction(x) - self.col_off) * sx, (Fraction(y) - self.row_off) * sy

    def to_scene_xy(self, u: float | Fraction, v: float | Fraction) -> tuple[Fraction, Fraction]:
        """Model pixel coordinates -> scene pixel coordinates, exact (the inverse of :meth:`to_model_xy`)."""
        sx, sy = self.scale
        return Fraction(u) / sx + self.col_off, Fraction(v) / sy + self.row_off

    def model_window(self, scene_window: Window) -> Window:
        """The model pixels covering ``scene_window``'s ground (edges rounded outward, clipped to the grid)."""
        u0, v0 = self.to_model_xy(int(scene_window.col_off), int(scene_window.row_off))
        u1, v1 = self.to_model_xy(
            int(scene_window.col_off) + int(scene_window.width), int(scene_window.row_off) + int(scene_window.height)
        )
        return _window(u0, v0, u1, v1, self.model_width, self.model_height)

    def scene_window(self, model_window: Window) -> Window:
        """The scene pixels covering ``model_window``'s ground (edges rounded outward, clipped to the region)."""
        x0, y0 = self.to_scene_xy(int(model_window.col_off), int(model_window.row_off))
        x1, y1 = self.to_scene_xy(
            int(model_window.col_off) + int(model_window.width), int(model_window.row_off) + int(model_window.height)
        )
        win = _window(
            x0 - self.col_off, y0 - self.row_off, x1 - self.col_off, y1 - self.row_off, self.width, self.height
        )
        return Window(int(win.col_off) + self.col_off, int(win.row_off) + self.row_off, win.width, win.height)

    def scene_read_window(self, model_window: Window) -> Window:
        """The scene pixels :meth:`to_model` needs to compute ``model_window`` (inside the region)."""
        c0, c1 = _span(model_window.col_off, model_window.width)
        r0, r1 = _span(model_window.row_off, model_window.height)
        a, b = _support(self.width, self.model_width, c0, c1)
        y, z = _support(self.height, self.model_height, r0, r1)
        return Window(a + self.col_off, y + self.row_off, b - a, z - y)

    def model_read_window(self, scene_window: Window) -> Window:
        """The model pixels :meth:`to_scene` needs to compute ``scene_window`` (inside the model grid)."""
        c0, c1 = _span(scene_window.col_off - self.col_off, scene_window.width)
        r0, r1 = _span(scene_window.row_off - self.row_off, scene_window.height)
        a, b = _support(self.model_width, self.width, c0, c1)
        y, z = _support(self.model_height, self.height, r0, r1)
        return Window(a, y, b - a, z - y)

    def to_model(self, data: Tensor, read_window: Window, model_window: Window) -> Tensor:
        """Resample scene data onto the model grid.

        Args:
            data: ``(..., h, w)`` floating tensor holding the scene pixels of ``read_window``
                (normalised, invalid pixels already filled).
            read_window: the scene window ``data`` covers; it must contain
                :meth:`scene_read_window` of ``model_window``.
            model_window: the model pixels wanted.

        Returns:
            ``(..., H, W)`` with ``(H, W)`` the size of ``model_window``, same dtype and device.
        """
        return self._resample(
            data,
            read_window,
            model_window,
            src=(self.width, self.height),
            dst=(self.model_width, self.model_height),
            src_origin=(self.col_off, self.row_off),
            dst_origin=(0, 0),
        )

    def to_scene(self, data: Tensor, read_window: Window, scene_window: Window) -> Tensor:
        """Resample model-grid values (probabilities, or their sums and weight sums) back onto the scene grid.

        Args:
            data: ``(..., h, w)`` floating tensor holding the model pixels of ``read_window``.
            read_window: the model window ``data`` covers; it must contain
                :meth:`model_read_window` of ``scene_window``.
            scene_window: the scene pixels wanted (inside the region).

        Returns:
            ``(..., H, W)`` with ``(H, W)`` the size of ``scene_window``.
        """
        return self._resample(
            data,
            read_window,
            scene_window,
            src=(self.model_width, self.model_height),
            dst=(self.width, self.height),
            src_origin=(0, 0),
            dst_origin=(self.col_off, self.row_off),
        )

    def valid_to_model(self, valid: np.ndarray, read_window: Window, model_window: Window) -> np.ndarray:
        """Nearest-neighbour validity on the model grid: ``(..., h, w)`` bool of ``read_window`` -> ``(..., H, W)``."""
        c0, c1 = _span(model_window.col_off, model_window.width)
        r0, r1 = _span(model_window.row_off, model_window.height)
        cols = _nearest(self.width, self.model_width, c0, c1) + self.col_off - int(read_window.col_off)
        rows = _nearest(self.height, self.model_height, r0, r1) + self.row_off - int(read_window.row_off)
        _check_inside(cols, int(read_window.width), rows, int(read_window.height))
        return valid[..., rows[:, None], cols[None, :]]

    def _resample(
        self,
        data: Tensor,
        read_window: Window,
        out_window: Window,
        src: tuple[int, int],
        dst: tuple[int, int],
        src_origin: tuple[int, int],
        dst_origin: tuple[int, int],
    ) -> Tensor:
        if not data.is_floating_point():
            raise TypeError(f"resampling needs a floating-point tensor, got {data.dtype}")
        if tuple(data.shape[-2:]) != (int(read_window.height), int(read_window.width)):
            raise ValueError(f"data of shape {tuple(data.shape)} does not match the window {read_window}")
        c0, c1 = _span(out_window.col_off - dst_origin[0], out_window.width)
        r0, r1 = _span(out_window.row_off - dst_origin[1], out_window.height)
        cols, wc = axis_taps(src[0], dst[0], c0, c1)
        rows, wr = axis_taps(src[1], dst[1], r0, r1)
        cols = cols - (int(read_window.col_off) - src_origin[0])
        rows = rows - (int(read_window.row_off) - src_origin[1])
        _check_inside(cols[wc > 0], int(read_window.width), rows[wr > 0], int(read_window.height))
        cols = np.clip(cols, 0, int(read_window.width) - 1)
        rows = np.clip(rows, 0, int(read_window.height) - 1)
        return _resample_axis(_resample_axis(data, data.dim() - 1, cols, wc), data.dim() - 2, rows, wr)


def _span(offset: float, size: float) -> tuple[int, int]:
    return int(offset), int(offset) + int(size)


def _window(x0: Fraction, y0: Fraction, x1: Fraction, y1: Fraction, width: int, height: int) -> Window:
    """Whole pixels covering ``[x0, x1] x [y0, y1]``, clipped to ``[0, width) x [0, height)``."""
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    return Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))


def _check_inside(cols: np.ndarray, width: int, rows: np.ndarray, height: int) -> None:
    bad_cols = cols.size > 0 and (cols.min() < 0 or cols.max() >= width)
    bad_rows = rows.size > 0 and (rows.min() < 0 or rows.max() >= height)
    if bad_cols or bad_rows:
        raise ValueError("the data's window does not contain every pixel the resampling reads (use *_read_window)")
