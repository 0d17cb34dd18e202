"""One scene over a Dask cluster: horizontal bands as tasks, one COG assembled by the driver.

The driver does once what must be scene-wide, exactly as :func:`~.predict.predict_scene` does:
checks the outputs, opens the scene, computes the normalisation statistics, the memory plan,
the provenance tags and the output specs. It then cuts the grid into bands
(:func:`~.bands.plan_bands`) and submits one task per band (:func:`~.bands.run_band`), each
of which computes its tiles and its halo with a model loaded once per worker process and writes
its rows into a scratch GeoTIFF in a folder every worker and the driver can reach. The driver
copies the bands, window by window, into the same :class:`~segnext_geo.raster.writer.StreamedGeoTIFF`
a single process writes, which builds the COG (GDAL's COG driver, overviews, tags, colour
table, nodata, mask): the outputs are those of a single-process run, byte for byte. The scratch
folder is removed on success, on error and on Ctrl-C.

Progress comes from the tasks as Dask events (``[band, tiles done]`` per attempt; the driver
keeps each band's largest count, so a retried band does not count twice).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import rasterio
import torch
from rasterio.windows import Window

from ..errors import UserError
from ..outputs import atomic_output
from ..raster.source import SceneSource
from ..raster.stac import StacScene
from ..raster.writer import RasterSpec, StreamedGeoTIFF, gdal_env
from .bands import BandJob, BandResult, band_rows, plan_bands, run_band
from .grid import Rect
from .options import PredictOptions
from .pipeline import scratch_path
from .predict import (
    PredictResult,
    _plan,
    _progress_bar,
    _run_environment,
    _vectorize,
    open_run,
)

__all__ = [
    "DistributedOptions",
    "DistributedResult",
    "ResampleOnCluster",
    "auto_band_count",
    "predict_scene_distributed",
]

log = logging.getLogger("segnext_geo.inference")

#: Bands per worker when ``band_count`` is not given: enough for load balance and cheap retries.
BANDS_PER_WORKER = 4
#: The fewest tile rows an automatic band has: the halo (one tile row per band edge with the
#: default overlap) then costs at most 1/4 of the band's own work.
MIN_BAND_ROWS = 4
#: The largest window (px per side) the driver copies from a band into the output at once.
COPY_WINDOW = 2048
_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")


@dataclass(frozen=True)
class DistributedOptions:
    """Where and how one scene runs on a Dask cluster (validated; errors name the flag).

    ``scheduler``: address of a running scheduler (``tcp://host:8786``), or ``cluster``: start a
    LocalCluster of that many worker processes (one thread each); exactly one of them (or pass a
    ``client`` to :func:`predict_scene_distributed`). ``scratch_dir``: a folder every worker can
    write and the driver read (default: beside the output); a private folder is made in it and
    removed at the end. ``band_count``: how many bands (default: :func:`auto_band_count`).
    ``retries``: Dask retries of a band whose task failed. ``gpus_per_worker``: the ``GPU``
    resource each band needs (workers started with ``--resources GPU=1``). ``threads``: torch
    threads each band runs with (default: the driver's, ``torch.get_num_threads()``). On the CPU
    the forward's rounding depends on the thread count (oneDNN splits its sums by thread), so
    the output equals a single-process run with the same number of torch threads.
    """

    scheduler: str | None = None
    cluster: int | None = None
    scratch_dir: Path | None = None
    band_count: int | None = None
    retries: int = 2
    gpus_per_worker: float = 0.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.scheduler is not None and self.cluster is not None:
            raise UserError("--scheduler, --cluster: give one of them (an existing cluster, or N local workers)")
        if self.scheduler is not None:
            s = str(self.scheduler).strip()
            if not s or (not s.startswith(_SCHEMES) and ":" not in s):
                raise UserError(f"--scheduler: {self.scheduler!r} is not a scheduler address (tcp://host:8786)")
        if self.cluster is not None and (isinstance(self.cluster, bool) or int(self.cluster) < 1):
            raise UserError(f"--cluster: {self.cluster!r} workers; give 1 or more")
        if self.band_count is not None and (isinstance(self.band_count, bool) or int(self.band_count) < 1):
            raise UserError(f"--band-count: {self.band_count!r}; give 1 or more")
        if int(self.retries) < 0:
            raise UserError(f"--retries: {self.retries!r}; give 0 or more")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise UserError(f"--threads-per-worker: {self.threads!r}; give 1 or more")
        if float(self.gpus_per_worker) < 0:
            raise UserError(f"--gpus-per-worker: {self.gpus_per_worker!r}; give 0 or more")
        if self.scratch_dir is not None:
            d = Path(self.scratch_dir)
            if not d.is_dir():
                raise UserError(f"--scratch-dir: {d} is not a folder")
            if not os.access(d, os.W_OK | os.X_OK):
                raise UserError(f"--scratch-dir: {d} is not writable")


def auto_band_count(height: int, tile: int, overlap: int, workers: int) -> int:
    """Bands for a scene of ``height`` px: ``4 x workers``, but bands of at least :data:`MIN_BAND_ROWS`
    tile rows (the halo's cost), and never fewer bands than workers nor more than tile rows."""
    from .grid import axis_starts

    rows = len(axis_starts(height, tile, overlap))
    return max(1, min(rows, max(workers, min(BANDS_PER_WORKER * workers, rows // MIN_BAND_ROWS))))


class ResampleOnCluster(UserError):
    """``--gsd`` would resample the scene, which does not run in bands on a cluster (raised before
    any work; ``batch`` then runs the scene as one ordinary task)."""


@dataclass
class DistributedResult(PredictResult):
    """:class:`~.predict.PredictResult` plus how the scene was split: ``bands``, ``halo_tiles``
    (tile computations done twice, once by each neighbouring band), ``workers`` (in the cluster)
    ``band_workers`` (who computed each band, ``host:pid``), the Dask ``dashboard`` link and
    ``band_peak_rss_mb`` (the peak RSS of the worker process after each band, MiB)."""

    bands: int = 0
    halo_tiles: int = 0
    workers: int = 0
    band_workers: list[str] | None = None
    dashboard: str | None = None
    band_peak_rss_mb: list[float] | None = None


def predict_scene_distributed(
    scene: str | Path | StacScene,
    checkpoint: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    dist: DistributedOptions | None = None,
    *,
    probs_out: str | Path | None = None,
    mask_out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    client: Any = None,
) -> DistributedResult:
    """:func:`~.predict.predict_scene` with the scene cut into bands computed on a Dask cluster.

    Same arguments and outputs as :func:`~.predict.predict_scene` (the model must be a checkpoint
    path, catalogue name or URL that every worker can load), plus ``dist`` (where it runs) or an
    existing ``client``. The outputs are identical to a single-process run with as many torch
    threads. STAC Items and remote scenes work (the workers read what the driver resolved, with
    the same network options), and so does an area of interest (the bands cover the tile rows
    over it). ``--gsd`` resampling does not run on a cluster: when it would resample, the run is
    refused before any work (``--gsd native`` runs; ``auto`` with a model of unknown GSD is native).

    Raises:
        UserError: bad input, option or output (one line naming it); a band that failed on every
            try; ``--gsd`` that resamples.
        AreaMissesScene: the area of interest does not overlap the scene.
    """
    t0 = time.perf_counter()
    opts = options if options is not None else PredictOptions()
    dopts = dist if dist is not None else DistributedOptions()
    if not isinstance(checkpoint, str | Path):
        raise TypeError("predict_scene_distributed: pass a checkpoint (path, name or URL) that the workers load")
    ckpt = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else str(checkpoint)
    run = open_run(scene, ckpt, out, probs_out, mask_out, opts, overwrite)
    src, paths, runner, meta, info, area = run.src, run.paths, run.runner, run.meta, run.info, run.area
    if run.resample is not None:
        raise ResampleOnCluster(
            f"--scheduler/--cluster, --gsd {opts.gsd}: resampling {src.name} does not run on a cluster "
            "(use --gsd native, or run it in one process)"
        )
    frame = None
    if area is not None and area.window is not None:
        w = area.window
        frame = Rect(int(w.row_off), int(w.col_off), int(w.row_off + w.height), int(w.col_off + w.width))
    plan, full_grid, notes = _plan(info, meta, runner, opts, paths, area)
    notes += run.notes
    # the workers compile exactly when a single process would (compiled and eager differ in rounding)
    task_opts = opts.replace(compile="on" if runner.compiled else "off")
    with ExitStack() as stack:
        # made first, removed last: after an own cluster's workers have stopped writing into it
        scratch = stack.enter_context(_scratch_folder(dopts.scratch_dir, paths.raster))
        if client is None:
            client = _make_client(dopts)
            stack.callback(_close_client, client)
        workers = max(1, len(client.nthreads()))
        dashboard = getattr(client, "dashboard_link", None)
        if progress and dashboard:
            print(f"Dask dashboard: {dashboard}", file=sys.stderr)
        grid, bands = plan_bands(
            info.height,
            info.width,
            plan.tile,
            plan.overlap,
            plan.working_set,
            dopts.band_count or auto_band_count(info.height, plan.tile, plan.overlap, workers),
            frame,
        )
        halo = sum(b.halo for b in bands)
        log.info("%s: %d bands on %d workers (%d halo tiles computed twice)", info.path, len(bands), workers, halo)
        stack.enter_context(_run_environment(paths.raster))
        stack.enter_context(src.environment())
        source = stack.enter_context(SceneSource(info))
        norm, specs = run.outputs(source, ckpt, full_grid, opts)
        first = BandJob(
            info=info,
            norm=norm,
            grid_args=(grid.height, grid.width, grid.tile_size, grid.overlap, grid.working_set),
            band=bands[0],
            checkpoint=ckpt,
            options=task_opts,
            specs=specs,
            probs=paths.probs is not None,
            classes=meta.num_classes,
            scratch=str(scratch),
            threads=dopts.threads or torch.get_num_threads(),
            region=full_grid.region,
            area=area,
            frame=frame,
            scene=src,
        )
        jobs = [replace(first, band=band) for band in bands]
        bar = stack.enter_context(_progress_bar(len(grid) + halo, src.label, progress))
        results = _run_bands(client, jobs, dopts, bar)
        rows = [band_rows(b, frame) for b in bands]
        _assemble(results, rows, specs, paths.raster, paths.probs, paths.overwrite)
    pixels = sum(r.pixels for r in results)
    run.note_if_empty(pixels, notes)
    polygons = _vectorize(paths, meta, opts, src.source, overwrite, progress)
    return DistributedResult(
        out=paths.out,
        mask_path=paths.mask,
        probs_path=paths.probs,
        pixels=pixels,
        tiles=len(grid),
        skipped_tiles=sum(r.skipped for r in results),
        elapsed_s=time.perf_counter() - t0,
        warnings=notes,
        polygons=polygons,
        forward_s=sum(r.forward_s for r in results),
        plan=plan,
        runner=runner.describe(),
        window=area.window if area is not None else None,
        gsd=run.gsd_line,
        bands=len(bands),
        halo_tiles=halo,
        workers=workers,
        band_workers=[r.worker for r in results],
        dashboard=dashboard,
        band_peak_rss_mb=[r.peak_rss_mb for r in results],
    )


def _make_client(dopts: DistributedOptions) -> Any:
    """A client of the cluster at ``--scheduler``, or of a new LocalCluster of ``--cluster`` processes.

    The local workers log only critical messages: a band's failure reaches the driver as its
    task's exception, and the shutdown's heartbeat chatter would only clutter the terminal.
    """
    from distributed import Client, LocalCluster

    if dopts.scheduler is not None:
        try:
            return Client(dopts.scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise UserError(f"--scheduler: cannot connect to {dopts.scheduler} ({e})") from None
    if dopts.cluster is None:
        raise UserError("--scheduler, --cluster: give one of them to run a scene on a cluster")
    cluster = LocalCluster(
        n_workers=int(dopts.cluster),
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        resources={"GPU": dopts.gpus_per_worker} if dopts.gpus_per_worker else None,
        silence_logs=logging.CRITICAL,
    )
    return Client(cluster)


def _close_client(client: Any) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextmanager
def _scratch_folder(parent: Path | None, raster: Path) -> Iterator[Path]:
    """A private folder for the band GeoTIFFs (in ``parent``, else hidden beside the output), removed at the end."""
    base = Path(parent) if parent is not None else raster.parent
    folder = Path(tempfile.mkdtemp(prefix=f".{raster.stem}.bands-", dir=base))
    try:
        yield folder.resolve()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_bands(client: Any, jobs: list[BandJob], dopts: DistributedOptions, bar: Any) -> list[BandResult]:
    """Submit one task per band, feed ``bar`` from the tasks' progress events, return results in band order.

    On any error or Ctrl-C the remaining tasks are cancelled before the exception propagates.
    """
    from distributed import wait

    topic = f"segnext-progress-{uuid.uuid4().hex}"
    jobs = [_with_topic(job, topic) for job in jobs]
    resources = {"GPU": dopts.gpus_per_worker} if dopts.gpus_per_worker else None
    done_per_band = [0] * len(jobs)

    def on_event(event: tuple[float, Any]) -> None:  # on the client's event loop thread
        index, n = event[1]
        done_per_band[index] = max(done_per_band[index], int(n))

    client.subscribe_topic(topic, on_event)
    futures = [
        client.submit(
            run_band, job, retries=dopts.retries, pure=False, resources=resources, key=f"band-{job.band.index}-{topic}"
        )
        for job in jobs
    ]
    try:
        pending = set(futures)
        while pending:
            try:
                finished = wait(list(pending), timeout=0.25, return_when="FIRST_COMPLETED")
                pending = set(finished.not_done)
                for f in finished.done:
                    if f.status == "error":
                        f.result()  # raises the task's exception (UserError stays a UserError)
            except TimeoutError:
                pass
            bar.update(sum(done_per_band) - bar.n)
        results: list[BandResult] = [f.result() for f in futures]
        for r in results:
            done_per_band[r.index] = r.tiles
        bar.update(sum(done_per_band) - bar.n)
        return results
    finally:
        client.cancel(futures, force=True)
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # the cluster may be gone (Ctrl-C while it shuts down)
            pass


def _with_topic(job: BandJob, topic: str) -> BandJob:
    return replace(job, progress=topic)


def _assemble(
    results: list[BandResult],
    bands: list[Rect],
    specs: tuple[RasterSpec, RasterSpec],
    raster: Path,
    probs: Path | None,
    overwrite: bool,
) -> None:
    """Copy every band's rows (``bands``: where each goes in the outputs) into the outputs (the
    writer a single process uses) and build the COGs."""
    with ExitStack() as stack:
        classes_tmp = stack.enter_context(atomic_output(raster, overwrite, "--out"))
        classes_out = StreamedGeoTIFF(classes_tmp, scratch_path(raster), specs[0])
        stack.callback(classes_out.close)
        targets: list[tuple[StreamedGeoTIFF, str]] = [(classes_out, "classes")]
        if probs is not None:
            probs_tmp = stack.enter_context(atomic_output(probs, overwrite, "--probs-out"))
            probs_out = StreamedGeoTIFF(probs_tmp, scratch_path(probs), specs[1])
            stack.callback(probs_out.close)
            targets.append((probs_out, "probs"))
        for band, result in zip(bands, results, strict=True):
            for target, kind in targets:
                path = result.classes if kind == "classes" else result.probs
                assert path is not None
                _copy_band(Path(path), band, target)
        for target, _ in targets:
            target.finish()


def _copy_band(path: Path, band: Rect, target: StreamedGeoTIFF) -> None:
    """Write a band's scratch GeoTIFF into ``target`` at the band's rows, window by window."""
    with gdal_env(), rasterio.open(path) as src:
        for r0 in range(0, src.height, COPY_WINDOW):
            for c0 in range(0, src.width, COPY_WINDOW):
                w = Window(c0, r0, min(COPY_WINDOW, src.width - c0), min(COPY_WINDOW, src.height - r0))
                data = src.read(window=w)
                valid = src.dataset_mask(window=w) > 0 if target.spec.mask else None
                target.write(data, Window(c0, r0 + band.y0, w.width, w.height), valid)
