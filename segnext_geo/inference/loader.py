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
from torch import Tensor

from ..raster.aoi import SceneArea
from ..raster.normalize import Normalization
from ..raster.source import SceneSource
from .grid import Tile

__all__ = ["TileData", "TileLoader", "load_tile"]


@dataclass
class TileData:
    """A read tile: ``image`` ``(C, th, tw)`` float32 normalised model input (``None`` when the tile
    has no valid pixel: it is skipped), ``valid`` ``(h, w)`` bool over the tile's part inside the scene."""

    tile: Tile
    image: Tensor | None
    valid: np.ndarray


def load_tile(
    source: SceneSource, norm: Normalization, tile: Tile, area: SceneArea | None = None, run: bool = True
) -> TileData:
    """Read, mask, normalise and (for scenes smaller than a tile) reflect-pad one tile.

    With an area of interest, ``valid`` is also False outside the area (those pixels are
    written as nodata), while the model input is made exactly as without one (the scene's own
    validity), so pixels inside the area get the values of a whole-scene run. ``run=False``
    (a tile that does not touch the area): nothing is read, the tile is skipped.
    """
    r = tile.rect
    if not run:
        return TileData(tile, None, np.zeros((r.height, r.width), dtype=bool))
    data, band_valid = source.read(r.window())
    valid = np.ones((r.height, r.width), dtype=bool) if band_valid is None else band_valid.any(axis=0)
    if not valid.any():
        return TileData(tile, None, valid)
    if area is not None:
        valid &= area.mask(r.window())
    x = norm.apply(data, band_valid)
    pad_y, pad_x = tile.th - r.height, tile.tw - r.width
    if pad_y or pad_x:
        x = np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect")
    return TileData(tile, torch.from_numpy(np.ascontiguousarray(x)), valid)


def _load_in_env(source: SceneSource, norm: Normalization, tile: Tile, area: SceneArea | None, run: bool) -> TileData:
    """:func:`load_tile` on a reader thread, with rasterio's GDAL error handler installed for that
    thread (without it GDAL would print its messages raw to stderr)."""
    with rasterio.Env():
        return load_tile(source, norm, tile, area, run)


class TileLoader:
    """Iterate over :class:`TileData` for ``tiles`` in order, reading up to ``prefetch`` tiles ahead.

    ``workers=0`` reads in the calling thread. Use as a context manager (or call :meth:`close`)
    so that pending reads are cancelled on error or Ctrl-C. With ``area``, tiles that do not
    touch it are not read (they come out skipped) and pixels outside it are not valid.
    """

    def __init__(
        self,
        source: SceneSource,
        norm: Normalization,
        tiles: Sequence[Tile],
        workers: int,
        prefetch: int,
        area: SceneArea | None = None,
    ) -> None:
        self.source, self.norm, self.tiles = source, norm, tiles
        self.area = area
        touching = area.tiles_touching([t.rect for t in tiles]) if area is not None else None
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
                yield load_tile(self.source, self.norm, t, self.area, run)
            return
        pool = self._pool
        pending: deque[Future[TileData]] = deque()
        it = iter(zip(self.tiles, self.run, strict=True))

        def submit(t: Tile, run: bool) -> None:
            pending.append(pool.submit(_load_in_env, self.source, self.norm, t, self.area, run))

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
