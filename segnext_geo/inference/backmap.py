"""Back to the scene's grid (``--gsd``): finished model-grid sums -> scene windows of classes and probabilities.

When ``--gsd`` resamples, tiles are cut, run and blended on the *model grid* of a
:class:`~segnext_geo.raster.gsd.ResampleGrid`, and the stitcher hands each finished super-tile
core on as its exact int32 sums (``K`` planes of ``sum(weight * probability)`` and the weight
sum, :class:`~.stitcher.FinishedSums`). :class:`BackMapper` turns them into the blended mean
probabilities ``p`` and a coverage plane ``v`` (1 where the model produced a value, 0 where every
covering tile was skipped as nodata), maps both with
:meth:`~segnext_geo.raster.gsd.ResampleGrid.to_scene` (linear, so ``map(p * v) / map(v)`` is the
resampling kernel's weighted mean over the covered model pixels), takes the argmax, and returns
scene windows ready to write. Scene pixels that are invalid in the scene stay nodata. Mapping
the mean rather than the raw sums keeps the blend's weight profile (which depends on where the
tiles fall) out of the back-mapping: with a pixel-wise model the result does not depend on the
tile size either, up to the fixed-point rounding of the blend.

**Which scene pixels a core writes.** A scene pixel reads a few model pixels on either side
(its *support*, at most ``ceil(2 * s) + 1`` with ``s`` model pixels per scene pixel). Core
boundaries ``b`` on the model grid are turned into scene cuts ``C(b)``: the number of scene
pixels whose support ends at or before ``b``. Core ``(i, j)`` writes scene rows ``[C(y_i),
C(y_{i+1}))`` x columns ``[C(x_j), C(x_{j+1}))``: every model pixel these read lies in cores
that are finished by then (this one, and those above and to the left, at most ``halo`` pixels
back). The written windows partition the scene.

**Memory.** The sums of a core, extended up and left by the halo, are held while it is mapped;
the extension comes from strips kept of earlier cores: the right strip of the previous core of
the row and the bottom strips of the previous super-tile row (``4 (K + 1) * halo`` bytes per
model-grid column: 1.4 MB per 10,000 columns for 16 classes and a halo of 2). The scene windows
are mapped in row chunks of at most :data:`CHUNK_BYTES` of float32 planes.

**Determinism.** Each scene pixel is computed from the complete int32 sums of its support, with
the same float operations in the same order whatever window it falls in, so the output does
not depend on the working set, the batch size or the reader threads: only on the model grid's
tiles (tile size, overlap) and the scene.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from rasterio.windows import Window

from ..raster.aoi import SceneArea
from ..raster.gsd import ResampleGrid, axis_taps
from ..raster.source import SceneSource
from .grid import Rect, SuperTile, TileGrid
from .stitcher import NODATA, ProbsMode

__all__ = ["CHUNK_BYTES", "BackMapper", "MappedWindow", "scene_cuts"]

#: The float32 planes of one mapped chunk stay under this many bytes.
CHUNK_BYTES = 32 * 2**20


@dataclass
class MappedWindow:
    """One scene window to write: ``classes`` ``(h, w)`` uint8 (nodata 255), ``probs`` ``(B, h, w)``
    uint8 or ``None``, ``valid`` ``(h, w)`` bool (the scene's own validity)."""

    window: Window
    classes: np.ndarray
    probs: np.ndarray | None
    valid: np.ndarray


def scene_cuts(boundaries: list[int], n_model: int, n_scene: int) -> tuple[list[int], np.ndarray, np.ndarray, int]:
    """Scene cuts for model core boundaries along one axis.

    Args:
        boundaries: model-grid core edges ``0 = b_0 < b_1 < ... < b_n = n_model``.
        n_model, n_scene: pixels along the axis on the model grid and the scene grid.

    Returns:
        ``(cuts, start, end, halo)``: ``cuts[i]`` scene pixels have a support ending at or before
        ``boundaries[i]`` (``cuts[0] = 0``, ``cuts[-1] = n_scene``); ``start``/``end`` ``(n_scene,)``
        the model pixels ``[start, end)`` each scene pixel reads; ``halo`` the most model pixels
        a written window reads before its core's first pixel.
    """
    idx, w = axis_taps(n_model, n_scene, 0, n_scene)
    used = w > 0
    start = np.where(used, idx, n_model).min(axis=1)
    end = np.where(used, idx, -1).max(axis=1) + 1
    cuts = [int(np.searchsorted(end, b, side="right")) for b in boundaries]
    cuts[0], cuts[-1] = 0, n_scene
    halo = 0
    for b, c in zip(boundaries[1:-1], cuts[1:-1], strict=True):
        if c < n_scene:
            halo = max(halo, int(b) - int(start[c]))
    return cuts, start, end, halo


class BackMapper:
    """Maps each finished core's sums back to the scene's grid (see the module docstring).

    Args:
        resample: the model grid over the scene.
        grid: the tile grid on the model grid.
        num_classes: K.
        probs_mode: also produce probabilities (``classes``: K bands, ``confidence``: 1 band).
        source: the scene (its validity masks the output).
        chunk_bytes: the float32 working memory of one mapped chunk.
        area: an area of interest: scene pixels outside it are nodata (``resample`` is then
            normally the model grid over its window).

    The model grid may cover a region of the scene (``resample.col_off``/``row_off``): the
    windows :meth:`map` returns are in scene pixels, inside that region.

    Call :meth:`map` for every super-tile in processing order (one thread).
    """

    def __init__(
        self,
        resample: ResampleGrid,
        grid: TileGrid,
        num_classes: int,
        probs_mode: ProbsMode | None,
        source: SceneSource,
        chunk_bytes: int = CHUNK_BYTES,
        area: SceneArea | None = None,
    ) -> None:
        if (grid.height, grid.width) != resample.model_shape:
            raise ValueError(f"tile grid {grid.height}x{grid.width} is not on the model grid {resample.model_shape}")
        self.rg, self.grid, self.k = resample, grid, int(num_classes)
        self.area = area
        self.probs_mode, self.source = probs_mode, source
        self.chunk_bytes = int(chunk_bytes)
        xb = [grid.xs[a] for a, _ in grid.col_groups] + [grid.width]
        yb = [grid.ys[a] for a, _ in grid.row_groups] + [grid.height]
        self.xcuts, self.xstart, self.xend, self.hx = scene_cuts(xb, resample.model_width, resample.width)
        self.ycuts, self.ystart, self.yend, self.hy = scene_cuts(yb, resample.model_height, resample.height)
        self._right: tuple[Rect, np.ndarray] | None = None
        self._bottom: dict[int, tuple[Rect, np.ndarray]] = {}
        self.valid_pixels = 0
        self.kept_bytes = 0

    def map(self, st: SuperTile, sums: np.ndarray) -> Iterator[MappedWindow]:
        """The scene windows that super-tile ``st`` completes, from its core's ``sums`` ``(K + 1, h, w)`` int32."""
        c = st.core
        if sums.shape != (self.k + 1, c.height, c.width):
            raise ValueError(f"sums of shape {sums.shape} do not match the core {c}")
        y0 = max(0, c.y0 - self.hy) if st.grow > 0 else c.y0
        x0 = max(0, c.x0 - self.hx) if st.gcol > 0 else c.x0
        box = Rect(y0, x0, c.y1, c.x1)
        buf = np.empty((self.k + 1, box.height, box.width), dtype=np.int32)
        if st.grow > 0:
            _paste(buf, box, *self._bottom[st.gcol])
        if st.gcol > 0:
            assert self._right is not None
            _paste(buf, box, *self._right)
        _paste(buf, box, c, sums)
        self._keep(st, box, buf)
        r0, r1 = self.ycuts[st.grow], self.ycuts[st.grow + 1]
        c0, c1 = self.xcuts[st.gcol], self.xcuts[st.gcol + 1]
        if r1 <= r0 or c1 <= c0:
            return
        per_row = (self.k + 1) * 4 * 3 * (c1 - c0 + box.width)  # the float32 planes, two copies, the output
        step = max(1, self.chunk_bytes // per_row)
        for ra in range(r0, r1, step):
            rb = min(r1, ra + step)
            yield self._map_rows(buf, box, ra, rb, c0, c1)

    def _keep(self, st: SuperTile, box: Rect, buf: np.ndarray) -> None:
        """Keep the strips later cores extend into: the right strip (next core of the row) and the bottom strip."""
        last_col = st.gcol == len(self.grid.col_groups) - 1
        self._right = None if last_col else _crop(buf, box, Rect(box.y0, max(0, box.x1 - self.hx), box.y1, box.x1))
        if st.grow < len(self.grid.row_groups) - 1:
            self._bottom[st.gcol] = _crop(buf, box, Rect(max(0, box.y1 - self.hy), box.x0, box.y1, box.x1))
        else:
            self._bottom.pop(st.gcol, None)
        self.kept_bytes = sum(a.nbytes for _, a in self._bottom.values()) + (
            self._right[1].nbytes if self._right is not None else 0
        )

    def _map_rows(self, buf: np.ndarray, box: Rect, ra: int, rb: int, c0: int, c1: int) -> MappedWindow:
        my0, my1 = int(self.ystart[ra]), int(self.yend[rb - 1])
        if my0 < box.y0 or my1 > box.y1:
            raise AssertionError(f"scene rows {ra}..{rb} read model rows {my0}..{my1} outside {box}")
        sums_in = torch.from_numpy(buf[:, my0 - box.y0 : my1 - box.y0])
        # the blended mean p = sums / weight sum on the model grid (exact int32 -> float64, then
        # float32), and whether a pixel has one
        weight = sums_in[self.k]
        covered = weight > 0
        data = torch.empty(sums_in.shape, dtype=torch.float32)
        data[: self.k] = sums_in[: self.k].double().div_(weight.clamp_min(1).double()).mul_(covered)
        data[self.k] = covered
        read = Window(box.x0, my0, box.width, my1 - my0)
        # cuts are counted from the region's corner; the window is in scene pixels
        window = Window(c0 + self.rg.col_off, ra + self.rg.row_off, c1 - c0, rb - ra)
        mapped = self.rg.to_scene(data, read, window)  # (K + 1, h, w) float32
        sums, wsum = mapped[: self.k], mapped[self.k]
        best, index = torch.max(sums, dim=0)  # on ties the lowest class, as the native path
        classes = index.to(torch.uint8).numpy()
        _, band_valid = self.source.read(window)
        valid = np.ones(classes.shape, dtype=bool) if band_valid is None else band_valid.any(axis=0)
        if self.area is not None:
            valid &= self.area.mask(window)
        empty = ~valid | (wsum <= 0).numpy()
        classes[empty] = NODATA
        probs = None
        if self.probs_mode is not None:
            denom = wsum.clamp_min(1e-30)
            p = best.div_(denom)[None] if self.probs_mode == "confidence" else sums.div_(denom)
            probs = p.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
            probs[:, empty] = 0
        self.valid_pixels += int(valid.sum())
        return MappedWindow(window, classes, probs, valid)


def _paste(buf: np.ndarray, box: Rect, rect: Rect, data: np.ndarray) -> None:
    """Copy ``data`` over ``rect`` into ``buf`` over ``box`` (the part inside ``box``)."""
    part = rect.intersect(box)
    if part.empty:
        return
    buf[:, part.y0 - box.y0 : part.y1 - box.y0, part.x0 - box.x0 : part.x1 - box.x0] = data[
        :, part.y0 - rect.y0 : part.y1 - rect.y0, part.x0 - rect.x0 : part.x1 - rect.x0
    ]


def _crop(buf: np.ndarray, box: Rect, rect: Rect) -> tuple[Rect, np.ndarray]:
    part = rect.intersect(box)
    return part, buf[:, part.y0 - box.y0 : part.y1 - box.y0, part.x0 - box.x0 : part.x1 - box.x0].copy()
