"""Polygonize one block of a class raster, and tell complete polygons from those cut by a seam.

A block is read with a rasterio window and polygonized with
:func:`rasterio.features.shapes` in *pixel coordinates of the whole raster* (the block's
transform is a pure translation), so every coordinate is an integer and a seam shared by
two blocks has bit-identical coordinates on both sides.

A polygon whose pixels do not reach an inner block edge (a *seam*) is complete: it is
post-processed right here and comes back as features. A polygon that reaches a seam is
*open*: it comes back in pixel space, with the index of the last block that can still join
it (:attr:`BlockResult.required`), and the seam pixels are labelled with the open polygon
they belong to (:attr:`BlockResult.top` etc.), which is all :mod:`.seams` needs to merge it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import rasterize, shapes
from rasterio.windows import Window

from ..errors import UserError
from ..raster.source import read_validity
from .canonical import first_pixel_keys
from .parts import Parts
from .postprocess import Finished, Finisher
from .source import SHAPES_DTYPES, MaskSource, ProbsSource

__all__ = ["BlockGrid", "BlockPolygonizer", "BlockResult", "PolygonizeJob", "shapes_to_polygons"]


@dataclass(frozen=True)
class BlockGrid:
    """Square blocks of ``size`` px over a ``height`` x ``width`` raster, in row-major order."""

    height: int
    width: int
    size: int

    @property
    def n_rows(self) -> int:
        return math.ceil(self.height / self.size)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.size)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def index(self, i: int, j: int) -> int:
        """Row-major number of block ``(i, j)``."""
        return i * self.n_cols + j

    def window(self, i: int, j: int) -> Window:
        """Pixel window of block ``(i, j)`` (the last row and column may be smaller)."""
        r0, c0 = i * self.size, j * self.size
        return Window(c0, r0, min(self.size, self.width - c0), min(self.size, self.height - r0))


@dataclass(frozen=True)
class PolygonizeJob:
    """Everything a (possibly remote) worker needs to polygonize any block.

    ``classes`` restricts the polygonized class ids (``None``: all but 0 unless
    ``keep_background``). ``count_classes``: stop once more than :data:`.source.MAX_CLASSES`
    distinct values were polygonized (a raster without class names that is an image).
    ``gdal_cache_mb`` caps GDAL's block cache so reading a huge raster block by block does not
    fill memory with cached tiles.
    """

    mask: MaskSource
    probs: ProbsSource | None
    grid: BlockGrid
    classes: tuple[int, ...] | None
    keep_background: bool
    connectivity: int
    finisher: Finisher
    count_classes: bool = False
    gdal_cache_mb: int = 64


@dataclass
class BlockResult:
    """The polygons of one block.

    Attributes:
        i, j: block row and column.
        finished: complete polygons, post-processed (features and deferred parts).
        open: polygons that reach a seam, in pixel coordinates.
        required: ``(len(open),)`` row-major index of the last block that can join each open
            polygon; once that block is merged the polygon's group cannot grow.
        top, bottom, left, right: for each pixel along that edge of the block (when the edge is
            a seam), the index into ``open`` of the polygon holding it, or -1 (``(w,)`` for
            top/bottom, ``(h,)`` for left/right; ``None`` on the raster's outer edge).
        n_polygons: polygons ``shapes`` produced in this block.
        class_ids: the distinct class ids polygonized in this block.
    """

    i: int
    j: int
    finished: Finished
    open: Parts
    required: NDArray[np.int64]
    top: NDArray[np.int64] | None
    bottom: NDArray[np.int64] | None
    left: NDArray[np.int64] | None
    right: NDArray[np.int64] | None
    n_polygons: int = 0
    class_ids: NDArray[np.int64] | None = None


def shapes_to_polygons(
    items: Iterable[tuple[dict[str, Any], float]], keep_geojson: bool = False, chunk: int = 1024
) -> tuple[NDArray[np.object_], NDArray[np.int64], list[dict[str, Any]]]:
    """``rasterio.features.shapes`` output -> ``(n,)`` shapely polygons and their ``(n,)`` values.

    Consumes the generator once, moving coordinates into float64 arrays every ``chunk``
    polygons (so the GeoJSON-like tuples of only one chunk are alive at a time), and builds
    every polygon in one call to :func:`shapely.from_ragged_array` (several times faster than
    ``shapely.geometry.shape`` per polygon; the geometries are identical). With
    ``keep_geojson`` the GeoJSON-like geometries are returned too (for rasterizing).
    """
    rings_per_poly: list[int] = []
    ring_len: list[int] = []
    values: list[float] = []
    kept: list[dict[str, Any]] = []
    arrays: list[NDArray[np.float64]] = []
    pending: list[list[tuple[float, float]]] = []
    n_pending = 0

    def flush() -> None:
        nonlocal n_pending
        arrays.append(np.fromiter(chain.from_iterable(chain.from_iterable(pending)), np.float64, count=2 * n_pending))
        pending.clear()
        n_pending = 0

    for geom, value in items:
        rings = geom["coordinates"]
        rings_per_poly.append(len(rings))
        for ring in rings:
            ring_len.append(len(ring))
            n_pending += len(ring)
        pending.extend(rings)
        values.append(value)
        if keep_geojson:
            kept.append(geom)
        if len(values) % chunk == 0:
            flush()
    if not values:
        return np.empty(0, dtype=object), np.empty(0, np.int64), kept
    flush()
    flat = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    ring_off = np.zeros(len(ring_len) + 1, np.int64)
    np.cumsum(ring_len, out=ring_off[1:])
    poly_off = np.zeros(len(rings_per_poly) + 1, np.int64)
    np.cumsum(rings_per_poly, out=poly_off[1:])
    geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, flat.reshape(-1, 2), (ring_off, poly_off))
    return np.asarray(geoms, dtype=object), np.asarray(values, np.float64).astype(np.int64), kept


def _quantum_sums(
    labels: NDArray[np.int32], conf: NDArray[np.float32], probs: ProbsSource, n: int
) -> NDArray[np.int64]:
    """Exact per-polygon sums of confidence in integer quanta (``(n,)``; -1 where a pixel has none).

    ``labels`` ``(h, w)`` holds polygon ``k`` as ``k + 1`` (0 elsewhere); ``conf`` the raster's
    own values (NaN where unknown). Values are split in 12-bit halves so every float64 sum
    is exact, then combined as int64.
    """
    lab = labels.ravel()
    c = conf.ravel()
    unknown = np.isnan(c)
    scaled = np.where(unknown, 0.0, c) / (probs.quantum if probs.is_float else 1.0)
    q = np.rint(np.clip(scaled, -(2.0**40), 2.0**40)).astype(np.int64)  # garbage beyond 0-1 must not overflow
    hi = np.bincount(lab, weights=q >> 12, minlength=n + 1)[1:]
    lo = np.bincount(lab, weights=q & 4095, minlength=n + 1)[1:]
    sums = (hi.astype(np.int64) << 12) + lo.astype(np.int64)
    if unknown.any():
        sums[np.bincount(lab, weights=unknown, minlength=n + 1)[1:] > 0] = -1
    return sums


def _runs_to_ids(
    tree: shapely.STRtree,
    classes: NDArray[Any],
    valid: NDArray[np.bool_],
    xs: NDArray[np.floating],
    ys: NDArray[np.floating],
) -> NDArray[np.int64]:
    """Label each pixel of a 1-pixel-wide line with the open polygon holding it (-1: none).

    A run of equal, valid pixels along the line lies in one polygon, so one pixel centre per
    run is looked up (pixel centres are never on a polygon boundary).
    """
    n = len(classes)
    change = np.empty(n, bool)
    change[0] = True
    change[1:] = (classes[1:] != classes[:-1]) | (valid[1:] != valid[:-1])
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, n))
    run_ids = np.full(len(starts), -1, np.int64)
    look = np.flatnonzero(valid[starts])
    if len(look):
        s = starts[look]
        pt, geom = tree.query(shapely.points(xs[s], ys[s]), predicate="within")
        if len(pt) != len(look):
            raise RuntimeError("vectorize: a seam pixel lies in no open polygon (internal error)")
        run_ids[look[pt]] = geom
    return np.repeat(run_ids, lengths)


class BlockPolygonizer:
    """Polygonizes blocks of one job; holds its own dataset handles (one per process)."""

    def __init__(self, job: PolygonizeJob) -> None:
        self.job = job
        self._env: rasterio.Env | None = None
        self._mask: Any = None
        self._probs: Any = None

    def _open(self) -> None:
        if self._mask is not None:
            return
        self._env = rasterio.Env(GDAL_CACHEMAX=self.job.gdal_cache_mb)
        self._env.__enter__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._mask = rasterio.open(self.job.mask.path)
            if self.job.probs is not None:
                self._probs = rasterio.open(self.job.probs.path)

    def close(self) -> None:
        """Close the dataset handles (idempotent)."""
        for ds in (self._mask, self._probs):
            if ds is not None:
                ds.close()
        self._mask = self._probs = None
        if self._env is not None:
            self._env.__exit__(None, None, None)
            self._env = None

    # -- reading ---------------------------------------------------------------------------
    def _read(self, ds: Any, band: int, window: Window, what: str) -> NDArray[Any]:
        try:
            return ds.read(band, window=window)
        except RasterioError as e:
            text = " ".join(str(e).split())[:200]
            raise UserError(
                f"{ds.name}: cannot read {what} at row {int(window.row_off)}, col {int(window.col_off)} "
                f"(truncated or corrupt file?): {text}"
            ) from None

    def _valid(self, a: NDArray[Any], window: Window) -> NDArray[np.bool_]:
        """Pixels to polygonize: valid under GDAL's masks (as ``predict`` reads scenes) and selected."""
        job, m = self.job, self.job.mask
        try:
            v = read_validity(self._mask, m.validity, a[None], window)
        except RasterioError as e:
            raise UserError(f"{m.path}: cannot read the mask band: {' '.join(str(e).split())[:200]}") from None
        valid = np.ones(a.shape, bool) if v is None else v[0]
        if job.classes is not None:
            valid &= np.isin(a, np.asarray(job.classes))
        elif not job.keep_background:
            valid &= a != 0
        return valid

    def _for_shapes(self, a: NDArray[Any], valid: NDArray[np.bool_], r0: int, c0: int) -> NDArray[Any]:
        """``a`` in a dtype ``shapes`` takes; only valid pixels count (invalid ones become 0).

        Raises:
            UserError: a valid value outside 32 bits, or (float rasters) not a whole number.
        """
        if a.dtype.name in SHAPES_DTYPES:
            return a
        if a.dtype == np.int8:
            return a.astype(np.int16)
        v = a[valid]
        if a.dtype.kind == "f":
            bad = np.flatnonzero(v != np.floor(v))  # NaN and fractions
            if len(bad):
                r, c = np.argwhere(valid)[bad[0]]
                raise UserError(
                    f"{self.job.mask.path}: the value {float(v[bad[0]])!r} at row {r0 + r}, col {c0 + c} is not a "
                    "class id (a whole number)"
                )
        if len(v):
            lo, hi = v.min(), v.max()
            i32 = np.iinfo(np.int32)
            if lo < i32.min or hi > i32.max:
                bad_value = lo if lo < i32.min else hi
                shown = int(bad_value) if np.isfinite(bad_value) else float(bad_value)
                raise UserError(f"{self.job.mask.path}: class ids must fit in 32 bits, found {shown}")
        return np.where(valid, a, 0).astype(np.int32)

    def _confidence(self, a: NDArray[Any], valid: NDArray[np.bool_], window: Window) -> NDArray[np.float32]:
        """Per-pixel confidence in the raster's own scale (0-255 for uint8; NaN where unknown)."""
        probs = self.job.probs
        assert probs is not None
        if not probs.per_class:
            return self._read(self._probs, 1, window, "probabilities").astype(np.float32)
        conf = np.full(a.shape, np.nan, np.float32)
        for c in np.unique(a[valid]).tolist():
            if 0 <= c < probs.count:
                sel = valid & (a == c)
                conf[sel] = self._read(self._probs, c + 1, window, f"probabilities of class {c}")[sel]
        return conf

    # -- the block -------------------------------------------------------------------------
    def __call__(self, i: int, j: int) -> BlockResult:
        """Polygonize block ``(i, j)``."""
        self._open()
        job, grid = self.job, self.job.grid
        win = grid.window(i, j)
        r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        a = self._read(self._mask, 1, win, "the class raster")
        valid = self._valid(a, win)
        seam_top, seam_bottom = i > 0, i < grid.n_rows - 1
        seam_left, seam_right = j > 0, j < grid.n_cols - 1
        with_conf = job.probs is not None
        if not valid.any():
            none_h, none_w = np.full(h, -1, np.int64), np.full(w, -1, np.int64)
            return BlockResult(
                i,
                j,
                Finished(None, Parts.empty(with_conf), np.empty(0, dtype=object)),
                Parts.empty(with_conf),
                np.empty(0, np.int64),
                none_w if seam_top else None,
                none_w if seam_bottom else None,
                none_h if seam_left else None,
                none_h if seam_right else None,
            )
        tf = Affine.translation(c0, r0)
        geoms, values, geojson = shapes_to_polygons(
            shapes(self._for_shapes(a, valid, r0, c0), mask=valid, connectivity=job.connectivity, transform=tf),
            keep_geojson=with_conf,
        )
        if job.connectivity == 8:
            # pixels joined at a corner come out as self-touching rings: make them valid
            # (a MultiPolygon whose parts touch at points; the covered pixels do not change)
            bad = ~shapely.is_valid(geoms)
            if bad.any():
                geoms[bad] = shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
        conf_sum = None
        if with_conf:
            assert job.probs is not None
            labels = rasterize(
                ((g, k + 1) for k, g in enumerate(geojson)), out_shape=(h, w), transform=tf, fill=0, dtype="int32"
            )
            conf_sum = _quantum_sums(labels, self._confidence(a, valid, win), job.probs, len(geojson))
            del geojson, labels
        pixels = np.rint(shapely.area(geoms)).astype(np.int64)
        parts = Parts(geoms, values.astype(np.int32), pixels, first_pixel_keys(geoms, grid.width), conf_sum)

        b = shapely.bounds(geoms)  # pixel-aligned: a bound on a block edge means pixels on it
        t_top = (b[:, 1] == r0) & seam_top
        t_bottom = (b[:, 3] == r0 + h) & seam_bottom
        t_left = (b[:, 0] == c0) & seam_left
        t_right = (b[:, 2] == c0 + w) & seam_right
        is_open = t_top | t_bottom | t_left | t_right
        finished = job.finisher.finish(parts.take(~is_open))
        open_parts = parts.take(is_open)

        k = grid.index(i, j)
        required = np.full(len(open_parts), k, np.int64)
        required[t_right[is_open]] = grid.index(i, min(j + 1, grid.n_cols - 1))
        required[t_bottom[is_open]] = grid.index(min(i + 1, grid.n_rows - 1), min(j + 1, grid.n_cols - 1))

        tree = shapely.STRtree(open_parts.geoms)
        cols = np.arange(c0, c0 + w) + 0.5
        rows = np.arange(r0, r0 + h) + 0.5

        def strip(cls: NDArray[Any], ok: NDArray[np.bool_], xs: NDArray[np.floating], ys: NDArray[np.floating]) -> Any:
            return _runs_to_ids(tree, cls, ok, xs, ys)

        return BlockResult(
            i,
            j,
            finished,
            open_parts,
            required,
            strip(a[0], valid[0], cols, np.full(w, r0 + 0.5)) if seam_top else None,
            strip(a[-1], valid[-1], cols, np.full(w, r0 + h - 0.5)) if seam_bottom else None,
            strip(a[:, 0], valid[:, 0], np.full(h, c0 + 0.5), rows) if seam_left else None,
            strip(a[:, -1], valid[:, -1], np.full(h, c0 + w - 0.5), rows) if seam_right else None,
            n_polygons=len(parts),
            class_ids=np.unique(values),
        )
