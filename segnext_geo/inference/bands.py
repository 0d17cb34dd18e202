"""Horizontal bands of a scene: the unit of work when one scene runs on many Dask workers.

A band is a run of consecutive super-tile rows of a :class:`~.grid.TileGrid` (its rows of
pixels are the union of those super-tiles' cores, full width). A band computes every tile of its
super-tile rows, plus the *halo*: the tiles of earlier rows whose rectangles reach into the band
(the bottom tile row(s) of the band above, ``ceil(overlap / stride)`` rows for an ``overlap``
and a tile stride). Those are computed twice, once by each neighbour, so every pixel of a band
is blended from exactly the tiles a single process uses; the fixed-point sums of
:mod:`.stitcher` do not depend on the order in which the tiles arrive, so the band's classes and
probability bytes are those of a single-process run.

:func:`plan_bands` picks the grid (its working set shrunk, when needed, so that super-tile rows
are no taller than a band) and the bands; :func:`run_band` is the Dask task: it runs one band
through the ordinary stages (reader, runner, stitcher) and writes the band's rows into a
scratch GeoTIFF (:class:`BandGeoTIFF`).
"""

from __future__ import annotations

import os
import resource
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window

from ..errors import UserError
from ..raster.aoi import SceneArea
from ..raster.normalize import Normalization
from ..raster.source import SceneInfo, SceneSource
from ..raster.writer import RasterSpec, StreamedGeoTIFF, gdal_env
from .grid import Rect, TileGrid
from .inputs import SceneInput
from .loader import TileLoader
from .options import PredictOptions
from .pipeline import CoreWriter, batches
from .runner import InferenceRunner
from .stitcher import PartialStore, Stitcher

__all__ = ["Band", "BandGeoTIFF", "BandJob", "BandResult", "band_rows", "plan_bands", "run_band"]


@dataclass(frozen=True)
class Band:
    """One band: super-tile rows ``groups`` ``[a, b)`` covering pixel rows ``rect`` (full width).

    ``tiles``: the grid indices of the tiles it runs, in grid order (halo first); ``halo``: how
    many of them belong to earlier bands (computed twice); ``supertiles``: its own super-tiles
    ``[first, stop)`` (only their cores are written; partial sums are not handed past ``stop``).
    """

    index: int
    groups: tuple[int, int]
    rect: Rect
    tiles: tuple[int, ...]
    halo: int
    supertiles: tuple[int, int]


def plan_bands(
    height: int, width: int, tile: int, overlap: int, working_set: int, bands: int, region: Rect | None = None
) -> tuple[TileGrid, list[Band]]:
    """The tile grid and ``bands`` bands of (nearly) equal height (one per tile row when there are fewer rows).

    The grid has the given tile and overlap (so the same tiles as a single process); its working
    set is ``working_set`` or less, so that a super-tile row is at most one band tall. The working
    set never changes the output (see :mod:`.stitcher`), only how the work is cut. ``region``
    (an area of interest's window): the grid keeps the tile rows and columns over it, as a single
    process does (:class:`~.grid.TileGrid`), and every band reaches into it.
    """
    probe = TileGrid(height, width, tile, overlap, working_set, region)
    rows = sum(b - a for a, b in probe.row_groups)
    n = max(1, min(int(bands), rows))
    stride = probe.th - overlap
    span = (rows // n - 1) * stride + probe.th  # the px height of the smallest band's tile rows
    grid = TileGrid(height, width, tile, overlap, max(probe.th, min(int(working_set), span)), region)
    groups = grid.row_groups
    ncols = len(grid.col_groups)
    out: list[Band] = []
    a = done = 0
    while a < len(groups):
        target = round((len(out) + 1) * rows / n)  # balanced: band k ends near row k * rows / n
        b = a
        while b < len(groups) and (done < target or b == a or _above(grid, b * ncols - 1, region)):
            done += groups[b][1] - groups[b][0]
            b += 1
        first, stop = a * ncols, b * ncols
        y0 = grid.supertiles[first].core.y0
        y1 = grid.supertiles[stop - 1].core.y1
        own = [t.index for s in grid.supertiles[first:stop] for t in (grid.tiles[i] for i in s.tiles)]
        halo = [t.index for t in grid.tiles[: grid.supertiles[first].tiles.start] if t.rect.y1 > y0]
        out.append(Band(len(out), (a, b), Rect(y0, 0, y1, width), tuple(halo + own), len(halo), (first, stop)))
        a = b
    return grid, out


def _above(grid: TileGrid, supertile: int, region: Rect | None) -> bool:
    """Whether super-tile ``supertile``'s core (and so a band ending with it) lies above ``region``."""
    return supertile >= 0 and region is not None and grid.supertiles[supertile].core.y1 <= region.y0


def band_rows(band: Band, frame: Rect | None) -> Rect:
    """The rows of the output a band writes, in output pixels: its own rows (full width), or with
    ``frame`` (an area of interest's window, which the outputs cover) their part inside it."""
    if frame is None:
        return band.rect
    y0, y1 = max(band.rect.y0, frame.y0), min(band.rect.y1, frame.y1)
    return Rect(y0 - frame.y0, 0, max(y0, y1) - frame.y0, frame.width)


class BandGeoTIFF(StreamedGeoTIFF):
    """The scratch GeoTIFF of one band: the output's bands, nodata and mask over the band's rows.

    ``write`` takes windows in scene coordinates (shifted by the band's first row); ``finish``
    closes the file and keeps it (the driver assembles the bands); ``close`` before ``finish``
    removes it.
    """

    def __init__(self, path: Path, spec: RasterSpec, rect: Rect) -> None:
        shifted = replace(
            spec,
            height=rect.height,
            transform=spec.transform * Affine.translation(0, rect.y0),
            tags={},
            colormap=None,
            descriptions=(),
        )
        super().__init__(path, path, shifted)
        self.y0 = rect.y0
        self._finished = False

    def write(self, data: np.ndarray, window: Window, valid: np.ndarray | None = None) -> None:
        super().write(data, Window(window.col_off, window.row_off - self.y0, window.width, window.height), valid)

    def finish(self) -> Path:
        with gdal_env():
            self._ds.close()
        self._finished = True
        return self.path

    def close(self) -> None:
        with gdal_env():
            if not self._ds.closed:
                self._ds.close()
        if not self._finished:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class BandJob:
    """Everything one band task needs, computed once by the driver for the whole scene.

    ``grid_args``: ``(height, width, tile, overlap, working_set)`` of the grid, ``region`` its
    region (an area of interest's window); ``area``: the area of interest (pixels outside it are
    nodata; the outputs cover ``region``'s frame ``frame``); ``scene``: how the scene is read
    (GDAL's network options for a remote one); ``specs``: the
    class raster's and (with ``probs``) the probability raster's spec; ``scratch``: the folder
    (shared by the workers and the driver) the band's GeoTIFFs go to; ``classes``: K; ``progress``: the
    Dask event topic the task reports ``[band, tiles done]`` on; ``threads``: torch threads (0: leave as
    is; set for every band: the forward's rounding depends on it).
    """

    info: SceneInfo
    norm: Normalization
    grid_args: tuple[int, int, int, int, int]
    band: Band
    checkpoint: str
    options: PredictOptions
    specs: tuple[RasterSpec, RasterSpec]
    probs: bool
    classes: int
    scratch: str
    progress: str | None = None
    threads: int = 0
    region: Rect | None = None
    area: SceneArea | None = None
    frame: Rect | None = None
    scene: SceneInput | None = None


@dataclass(frozen=True)
class BandResult:
    """What a band task wrote: the band's scratch GeoTIFFs (classes, probabilities), valid pixels,
    tiles run (halo included) and skipped (all nodata, own tiles only), forward seconds, and who ran it."""

    index: int
    classes: str
    probs: str | None
    pixels: int
    tiles: int
    skipped: int
    forward_s: float
    worker: str
    peak_rss_mb: float


def run_band(job: BandJob) -> BandResult:
    """The Dask task: run one band and write its rows (see the module docstring).

    A :class:`~segnext_geo.errors.UserError` reaches the driver as itself: it is raised again
    without its chained causes (GDAL's exceptions, which Dask could not send back as they are).
    """
    try:
        return _run_band(job)
    except UserError as e:
        message = str(e)
    raise UserError(message)


def _run_band(job: BandJob) -> BandResult:
    from ..batch import _cached_runner, _worker_device

    opts = job.options.replace(device=_worker_device(job.options.device))
    runner = _cached_runner(job.checkpoint, opts, job.threads or torch.get_num_threads())
    if job.threads:
        torch.set_num_threads(job.threads)  # a cached runner may have been made with another count
    if runner.num_classes is None:
        runner.num_classes = job.classes
    grid = TileGrid(*job.grid_args, job.region)
    band = job.band
    rows = band_rows(band, job.frame)
    tag = f"band-{band.index:05d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch = Path(job.scratch)
    tick = _progress(job.progress, band.index)
    forward0 = runner.forward_seconds()
    scene_env = job.scene.environment() if job.scene is not None else nullcontext()
    with scene_env, ExitStack() as stack, gdal_env():  # GDAL's network options outermost (rasterio.Env nesting)
        source = stack.enter_context(SceneSource(job.info))
        classes = BandGeoTIFF(scratch / f"{tag}.classes.tif", job.specs[0], rows)
        stack.callback(classes.close)
        probs = None
        if job.probs:
            probs = BandGeoTIFF(scratch / f"{tag}.probs.tif", job.specs[1], rows)
            stack.callback(probs.close)
        writer = CoreWriter(classes, probs, frame=job.frame)
        partials = PartialStore(scratch, writer.submit, runner.ops)
        stack.callback(partials.close)
        stack.callback(writer.close)
        with runner.ops.scope():
            mode = opts.probs_mode if job.probs else None
            st = Stitcher(grid, int(runner.num_classes), opts.blend, runner.ops, mode, partials, band.supertiles[1])
        tiles = [grid.tiles[i] for i in band.tiles]
        prefetch = opts.batch_size + 2 * max(1, opts.workers)
        reader = stack.enter_context(
            TileLoader(source, job.norm, tiles, opts.workers, prefetch=prefetch, area=job.area)
        )
        pixels, ran, skipped = _stream_band(reader, runner, st, writer, grid, band, opts.batch_size, tick)
    return BandResult(
        band.index,
        str(classes.path),
        str(probs.path) if probs is not None else None,
        pixels,
        ran,
        skipped,
        runner.forward_seconds() - forward0,
        f"{socket.gethostname()}:{os.getpid()}",
        _peak_rss_mb(),
    )


def _stream_band(
    reader: TileLoader,
    runner: InferenceRunner,
    st: Stitcher,
    writer: CoreWriter,
    grid: TileGrid,
    band: Band,
    batch_size: int,
    tick: Callable[..., None],
) -> tuple[int, int, int]:
    """As :func:`.pipeline.stream`, for a band: halo super-tiles are blended but not written."""
    pixels = ran = skipped = 0
    current = -1
    first = band.supertiles[0]

    def finish() -> None:
        nonlocal pixels
        core = st.finish()
        if current >= first:
            pixels += core.valid_pixels
            writer.write(core)

    with runner.ops.scope(), torch.inference_mode():
        for batch in batches(reader, batch_size):
            probs = runner.run([td.image for td in batch if td.image is not None])
            for td in batch:
                p = next(probs) if td.image is not None else None
                ran += 1
                skipped += p is None and td.tile.supertile >= first
                if td.tile.supertile != current:
                    if current >= 0:
                        finish()
                        tick(ran)
                    current = td.tile.supertile
                    st.start(grid.supertiles[current])
                st.add(td.tile, p, td.valid)
        if current >= 0:
            finish()
    writer.finish()
    tick(ran, True)
    return pixels, ran, skipped


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` on Linux (``ru_maxrss`` survives ``exec``, so a
    worker spawned by a big driver would report the driver's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _progress(topic: str | None, index: int) -> Callable[..., None]:
    """``tick(n, force=False)``: report ``n`` tiles done by this attempt of band ``index`` to the
    driver, as a Dask event on ``topic`` (at most every 0.2 s unless ``force``).

    Events travel on the worker's own connection to the scheduler: no client in the worker.
    """
    if topic is None:
        return lambda n, force=False: None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker (called directly)
        return lambda n, force=False: None
    last = [time.monotonic()]

    def tick(n: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= 0.2:
            last[0] = now
            worker.log_event(topic, [index, n])

    return tick
