"""Reading tiles ahead of the model with a thread pool, in grid order.

GDAL releases the GIL while it reads and decodes, so a few threads keep the model fed
without the memory cost of worker processes (each would import torch). Tiles come out in
grid order whatever the number of workers, which keeps the output deterministic. Each read
runs under a rasterio environment, so GDAL's messages on reader threads go to logging, not
raw to stderr.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor

from ..raster.aoi import SceneArea
from ..raster.gsd import ResampleGrid
from ..raster.normalize import Normalization
from ..raster.source import SceneSource
from .grid import Tile

__all__ = ["READ_CHUNK_BYTES", "TileData", "TileLoader", "load_tile"]

#: A resampled tile is read in bands of rows whose scene data (as float32, with scratch) stays under this.
READ_CHUNK_BYTES = 64 * 2**20


@dataclass
class TileData:
    """A read tile: ``image`` ``(C, th, tw)`` float32 normalised model input (``None`` when the tile
    has no valid pixel: it is skipped), ``valid`` ``(h, w)`` bool over the tile's part inside the scene."""

    tile: Tile
    image: Tensor | None
    valid: np.ndarray


def load_tile(
    source: SceneSource,
    norm: Normalization,
    tile: Tile,
    area: SceneArea | None = None,
    run: bool = True,
    resample: ResampleGrid | None = None,
) -> TileData:
    """Read, mask, normalise and (for scenes smaller than a tile) reflect-pad one tile.

    With an area of interest, ``valid`` is also False outside the area (those pixels are
    written as nodata), while the model input is made exactly as without one (the scene's own
    validity), so pixels inside the area get the values of a whole-scene run. ``run=False``
    (a tile that does not touch the area): nothing is read, the tile is skipped.

    With ``resample`` the tile is on the model grid (``--gsd``): the scene pixels it needs
    (:meth:`~segnext_geo.raster.gsd.ResampleGrid.scene_read_window`) are read, normalised and
    filled as for a native read, then resampled onto the model grid; validity is the scene's,
    nearest neighbour (``area`` is not applied here: the back-mapping masks the scene pixels
    outside it, :class:`~.backmap.BackMapper`).
    """
    if resample is not None:
        return _load_resampled(source, norm, tile, resample)
    r = tile.rect
    if not run:
        return TileData(tile, None, np.zeros((r.height, r.width), dtype=bool))
    data, band_valid = source.read(r.window())
    valid = np.ones((r.height, r.width), dtype=bool) if band_valid is None else band_valid.any(axis=0)
    if not valid.any():
        return TileData(tile, None, valid)
    if area is not None:
        valid &= area.mask(r.window())
    return TileData(tile, _pad(tile, norm.apply(data, band_valid)), valid)


def _load_resampled(source: SceneSource, norm: Normalization, tile: Tile, resample: ResampleGrid) -> TileData:
    """A model-grid tile, read and resampled in bands of model rows whose scene reads stay under
    :data:`READ_CHUNK_BYTES` (a tile shrunk from a much finer scene would otherwise read
    ``(T * ratio)^2`` scene px at once); a model pixel is the same whatever band computes it."""
    r = tile.rect
    full = resample.scene_read_window(r.window())
    scene_rows_per_row = max(1.0, resample.height / resample.model_height)
    row_bytes = int(full.width) * 16 * max(1, len(source.info.bands)) * scene_rows_per_row
    step = max(1, int(READ_CHUNK_BYTES // row_bytes))
    valid_parts: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for y0 in range(r.y0, r.y1, step):
        part = Window(r.x0, y0, r.width, min(step, r.y1 - y0))
        read = resample.scene_read_window(part)
        data, band_valid = source.read(read)
        scene_valid = np.ones(data.shape[1:], dtype=bool) if band_valid is None else band_valid.any(axis=0)
        valid_parts.append(resample.valid_to_model(scene_valid, read, part))
        x = torch.from_numpy(norm.apply(data, band_valid))
        rows.append(resample.to_model(x, read, part).numpy())
    valid = np.concatenate(valid_parts, axis=0)
    if not valid.any():
        return TileData(tile, None, valid)
    return TileData(tile, _pad(tile, np.concatenate(rows, axis=1)), valid)


def _pad(tile: Tile, x: np.ndarray) -> Tensor:
    """Reflect-pad ``x`` ``(C, h, w)`` to the tile's model size ``(C, th, tw)``."""
    r = tile.rect
    pad_y, pad_x = tile.th - r.height, tile.tw - r.width
    if pad_y or pad_x:
        x = np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect")
    return torch.from_numpy(np.ascontiguousarray(x))


def _load_in_env(
    source: SceneSource,
    norm: Normalization,
    tile: Tile,
    area: SceneArea | None,
    run: bool,
    resample: ResampleGrid | None,
) -> TileData:
    """:func:`load_tile` on a reader thread, with rasterio's GDAL error handler installed for that
    thread (without it GDAL would print its messages raw to stderr)."""
    with rasterio.Env():
        return load_tile(source, norm, tile, area, run, resample)


class TileLoader:
    """Iterate over :class:`TileData` for ``tiles`` in order, reading up to ``prefetch`` tiles ahead.

    ``workers=0`` reads in the calling thread. Use as a context manager (or call :meth:`close`)
    so that pending reads are cancelled on error or Ctrl-C. With ``area``, tiles that do not
    touch it are not read (they come out skipped) and pixels outside it are not valid.
    ``resample``: tiles are on this model grid (``--gsd``; see :func:`load_tile`); then every
    tile is read and ``area`` is left to the back-mapping.
    """

    def __init__(
        self,
        source: SceneSource,
        norm: Normalization,
        tiles: Sequence[Tile],
        workers: int,
        prefetch: int,
        area: SceneArea | None = None,
        resample: ResampleGrid | None = None,
    ) -> None:
        self.source, self.norm, self.tiles = source, norm, tiles
        self.resample = resample
        self.area = area if resample is None else None
        touching = self.area.tiles_touching([t.rect for t in tiles]) if self.area is not None else None
        self.run = [True] * len(tiles) if touching is None else [bool(v) for v in touching]
        self.workers = int(workers)
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="segnext-read") if self.workers else None

    def __enter__(self) -> TileLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __iter__(self) -> Iterator[TileData]:
        if self._pool is None:
            for t, run in zip(self.tiles, self.run, strict=True):
                yield load_tile(self.source, self.norm, t, self.area, run, self.resample)
            return
        pool = self._pool
        pending: deque[Future[TileData]] = deque()
        it = iter(zip(self.tiles, self.run, strict=True))

        def submit(t: Tile, run: bool) -> None:
            pending.append(pool.submit(_load_in_env, self.source, self.norm, t, self.area, run, self.resample))

        for t, run in it:
            submit(t, run)
            if len(pending) >= self.prefetch:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                submit(*nxt)
            yield done
