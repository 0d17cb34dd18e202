"""The predict pipeline, as in the README's diagram: reader -> runner -> stitcher -> writer.

Four stage objects, each testable alone:

- reader: :class:`~.loader.TileLoader` (threads read, mask and normalise tiles in grid order);
- runner: :class:`~.runner.InferenceRunner` (tiles -> softmax probabilities on the device);
- stitcher: :class:`~.stitcher.Stitcher` (blends probabilities into super-tile accumulators);
- writer: :class:`CoreWriter` (one thread writes finished cores into scratch GeoTIFFs).

:func:`open_stages` opens the outputs and stages and closes them in a safe order on any error
(the writer thread is stopped before the spill folder and the scratch files are removed);
:func:`stream` runs the tiles through them super-tile by super-tile.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rasterio.windows import Window

from ..outputs import atomic_output
from ..raster.aoi import SceneArea
from ..raster.gsd import ResampleGrid
from ..raster.normalize import Normalization
from ..raster.source import SceneSource
from ..raster.writer import RasterSpec, StreamedGeoTIFF
from .backmap import BackMapper
from .grid import Rect, TileGrid
from .loader import TileData, TileLoader
from .options import WRITER_QUEUE, PredictOptions
from .runner import InferenceRunner
from .stitcher import FinishedCore, FinishedSums, PartialStore, Stitcher

__all__ = ["CoreWriter", "Stages", "StreamCounts", "batches", "open_stages", "scratch_path", "stream"]


def scratch_path(path: Path) -> Path:
    """The scratch GeoTIFF of an output (hidden, beside it, unique per process)."""
    return path.with_name(f".{path.stem}.scratch-{os.getpid()}.tif")


class CoreWriter:
    """The writer stage: one thread writes finished cores (and spilled partial sums), in order.

    At most ``max_pending`` jobs wait (back-pressure bounds memory). :meth:`close` cancels what
    has not started and waits for what has, so nothing writes after it returns. ``frame``: the
    scene rectangle the outputs cover (an area of interest's window; ``None``: the whole scene);
    cores are cut to it and written at their place in it.
    """

    def __init__(
        self,
        classes: StreamedGeoTIFF,
        probs: StreamedGeoTIFF | None,
        max_pending: int = WRITER_QUEUE,
        frame: Rect | None = None,
    ) -> None:
        self.classes, self.probs = classes, probs
        self.frame = frame
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segnext-write")
        self._pending: deque[Future[Any]] = deque()
        self._max = max(1, max_pending)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``fn(*args)`` on the writer thread (waits while ``max_pending`` jobs are queued)."""
        while len(self._pending) >= self._max:
            self._pending.popleft().result()
        fut = self._pool.submit(fn, *args)
        self._pending.append(fut)
        return fut

    def write(self, core: FinishedCore) -> None:
        """Queue a finished core: its classes (and probabilities) at its window."""
        self.submit(self._write, core)

    def _write(self, core: FinishedCore) -> None:
        classes, probs, valid = core.numpy()  # waits for the device-to-host copy on this thread
        window = core.rect.window()
        if self.frame is not None:
            f, c = self.frame, core.rect
            part = c.intersect(f)
            if part.empty:
                return
            rows = slice(part.y0 - c.y0, part.y1 - c.y0)
            cols = slice(part.x0 - c.x0, part.x1 - c.x0)
            classes, valid = classes[rows, cols], valid[rows, cols]
            probs = None if probs is None else probs[:, rows, cols]
            window = Rect(part.y0 - f.y0, part.x0 - f.x0, part.y1 - f.y0, part.x1 - f.x0).window()
        self.classes.write(classes[None], window)
        if self.probs is not None and probs is not None:
            self.probs.write(probs, window, valid)

    def write_sums(self, core: FinishedSums, mapper: BackMapper) -> None:
        """Queue a finished core's sums (``--gsd``): mapped back to the scene's grid, then written."""
        self.submit(self._write_sums, core, mapper)

    def _write_sums(self, core: FinishedSums, mapper: BackMapper) -> None:
        for piece in mapper.map(core.supertile, core.numpy()):
            window = piece.window
            if self.frame is not None:  # the mapper writes inside the frame (its model grid covers it)
                window = Window(
                    window.col_off - self.frame.x0, window.row_off - self.frame.y0, window.width, window.height
                )
            self.classes.write(piece.classes[None], window)
            if self.probs is not None and piece.probs is not None:
                self.probs.write(piece.probs, window, piece.valid)

    def finish(self) -> None:
        """Wait for every queued job, then build the final COGs."""
        while self._pending:
            self._pending.popleft().result()
        self.classes.finish()
        if self.probs is not None:
            self.probs.finish()

    def close(self) -> None:
        """Stop the thread: cancel queued jobs, wait for the running one (idempotent)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


@dataclass
class Stages:
    """The opened stages of one run (see the module docstring); ``backmap`` maps finished cores
    back to the scene's grid when ``--gsd`` resamples (``None``: the model runs on the scene's grid)."""

    reader: TileLoader
    runner: InferenceRunner
    stitcher: Stitcher
    writer: CoreWriter
    partials: PartialStore
    backmap: BackMapper | None = None


@contextmanager
def open_stages(
    source: SceneSource,
    norm: Normalization,
    grid: TileGrid,
    runner: InferenceRunner,
    options: PredictOptions,
    raster_path: Path,
    probs_path: Path | None,
    specs: tuple[RasterSpec, RasterSpec],
    overwrite: bool,
    area: SceneArea | None = None,
    resample: ResampleGrid | None = None,
) -> Iterator[Stages]:
    """Open the outputs (temporary files renamed into place on success) and the four stages.

    With ``area`` (an area of interest on the scene), the outputs cover its window
    (``specs`` must be sized to it), only tiles touching it are read and run, and pixels
    outside it are nodata.

    With ``resample`` (``--gsd``), ``grid`` is on its model grid: tiles are resampled on read
    and finished cores are mapped back to the scene's grid by a :class:`~.backmap.BackMapper`
    on the writer thread. With both, ``resample`` must be the model grid over the area's
    window (every tile of it is run; the back-mapping masks the pixels outside the area).

    On any exception, Ctrl-C included, the reader threads stop, then the writer thread, then
    the spill folder and the scratch files go, then the temporary outputs: nothing is left.
    """
    with ExitStack() as stack:
        classes_tmp = stack.enter_context(atomic_output(raster_path, overwrite, "--out"))
        probs_tmp = stack.enter_context(atomic_output(probs_path, overwrite, "--probs-out")) if probs_path else None
        classes_out = StreamedGeoTIFF(classes_tmp, scratch_path(raster_path), specs[0])
        stack.callback(classes_out.close)
        probs_out = None
        if probs_tmp is not None and probs_path is not None:
            probs_out = StreamedGeoTIFF(probs_tmp, scratch_path(probs_path), specs[1])
            stack.callback(probs_out.close)
        frame = None
        if area is not None and area.window is not None:
            w = area.window
            frame = Rect(int(w.row_off), int(w.col_off), int(w.row_off + w.height), int(w.col_off + w.width))
        writer = CoreWriter(classes_out, probs_out, frame=frame)
        partials = PartialStore(raster_path.parent, writer.submit, runner.ops)
        stack.callback(partials.close)  # runs after writer.close: the writer may be writing into it
        stack.callback(writer.close)
        with runner.ops.scope():
            probs_mode = options.probs_mode if probs_out else None
            stitcher = Stitcher(grid, int(runner.num_classes or 0), options.blend, runner.ops, probs_mode, partials)
        backmap = None
        if resample is not None:
            backmap = BackMapper(resample, grid, int(runner.num_classes or 0), probs_mode, source, area=area)
        prefetch = options.batch_size + 2 * max(1, options.workers)
        reader = stack.enter_context(
            TileLoader(source, norm, grid.tiles, options.workers, prefetch=prefetch, area=area, resample=resample)
        )
        yield Stages(reader, runner, stitcher, writer, partials, backmap)


def batches(reader: TileLoader, batch_size: int) -> Iterator[list[TileData]]:
    """Tiles in grid order, grouped so that each group holds ``batch_size`` tiles with an image
    (skipped, all-nodata tiles ride along without taking a place)."""
    batch: list[TileData] = []
    images = 0
    for td in reader:
        batch.append(td)
        images += td.image is not None
        if images == batch_size:
            yield batch
            batch, images = [], 0
    if batch:
        yield batch


@dataclass
class StreamCounts:
    """What :func:`stream` did: valid pixels written, tiles run and tiles skipped (all nodata)."""

    pixels: int = 0
    tiles: int = 0
    skipped: int = 0


def stream(
    stages: Stages, grid: TileGrid, batch_size: int, tick: Callable[[int], object] = lambda n: None
) -> StreamCounts:
    """Run every tile of ``grid`` through the stages and finish the outputs.

    Super-tiles are processed in order; when the first tile of the next one arrives, the current
    one is finished and its core handed to the writer. ``tick(n)`` reports progress in tiles.
    """
    counts = StreamCounts()
    st, runner, writer = stages.stitcher, stages.runner, stages.writer
    current = -1

    def finish() -> None:
        if stages.backmap is not None:
            writer.write_sums(st.finish_sums(), stages.backmap)
            return
        core = st.finish()
        counts.pixels += core.valid_pixels
        writer.write(core)

    with runner.ops.scope(), torch.inference_mode():
        for batch in batches(stages.reader, batch_size):
            probs = runner.run([td.image for td in batch if td.image is not None])
            for td in batch:
                p = next(probs) if td.image is not None else None
                counts.tiles += 1
                counts.skipped += p is None
                if td.tile.supertile != current:
                    if current >= 0:
                        finish()
                    current = td.tile.supertile
                    st.start(grid.supertiles[current])
                st.add(td.tile, p, td.valid)
                tick(1)
        if current >= 0:
            finish()
    writer.finish()
    if stages.backmap is not None:
        counts.pixels = stages.backmap.valid_pixels
    return counts
