"""``predict_scene``: a scene of any size -> a georeferenced class raster (and polygons), in bounded memory.

Pipeline: a thread pool reads and normalises tiles in grid order (:mod:`.loader`); the main
thread runs batches through the model (:mod:`.runner`) and blends softmax probabilities into
super-tile accumulators (:mod:`.stitcher`); finished cores go to a writer thread that writes
them as windows of tiled scratch GeoTIFFs, which become COGs at the end. Outputs appear at their
paths only when complete (temporary file + rename; Ctrl-C and SIGTERM leave nothing behind).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from torch import nn

from ..errors import UserError
from ..models import ModelMeta, load_model
from ..outputs import atomic_output, check_output, sigterm_as_interrupt
from ..raster.normalize import NormalizationMethod, compute_normalization
from ..raster.source import SceneInfo, SceneSource, check_scene, open_scene, parse_bands
from ..raster.writer import RasterSpec, StreamedGeoTIFF, class_colormap, json_tag
from .blend import BlendMode, effective_mode
from .grid import MIN_TILE, TileGrid, round_tile_size
from .loader import TileData, TileLoader
from .runner import TileRunner, pick_device
from .stitcher import FinishedCore, PartialStore, ProbsMode, Stitcher
from .tta import TTAMode

if TYPE_CHECKING:
    from ..vector.options import VectorOptions

__all__ = ["RASTER_SUFFIXES", "VECTOR_SUFFIXES", "PredictResult", "auto_working_set", "predict_scene"]

log = logging.getLogger("segnext_geo.inference")

RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".gpkg", ".parquet", ".fgb", ".geojson", ".shp")
#: Accumulator budget used to pick the default super-tile side.
WORKING_SET_BYTES = 256 * 2**20
MAX_SUPERTILE = 4096
#: GDAL block cache while predicting (reads of the scene, writes of the outputs).
GDAL_CACHE_BYTES = 64 * 2**20


@dataclass
class PredictResult:
    """What :func:`predict_scene` wrote.

    ``out``: the class raster (or the vector file); ``mask_path``: the class raster kept beside a
    vector output (``None`` when it was temporary); ``probs_path``: the probability raster;
    ``pixels``: valid (non-nodata) pixels; ``tiles``/``skipped_tiles``: tiles in the grid and tiles
    skipped because all their pixels are nodata; ``polygons``: features written (vector output).
    """

    out: Path
    mask_path: Path | None
    probs_path: Path | None
    pixels: int
    tiles: int
    skipped_tiles: int
    elapsed_s: float
    warnings: list[str] = field(default_factory=list)
    polygons: int | None = None


def auto_working_set(num_classes: int, budget: int = WORKING_SET_BYTES) -> int:
    """The largest super-tile side (<= 4096 px) whose ``(K + 2)`` float32 accumulator planes fit ``budget``."""
    return max(MIN_TILE, min(MAX_SUPERTILE, int(math.sqrt(budget / (4 * (num_classes + 2))))))


def _choice(value: str, allowed: Sequence[str], option: str) -> str:
    if value not in allowed:
        raise UserError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _resolve_model(model_or_checkpoint: nn.Module | str | Path, meta: ModelMeta | None) -> tuple[nn.Module, ModelMeta]:
    if isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
        meta = meta if meta is not None else getattr(model, "meta", None)
        if not isinstance(meta, ModelMeta):
            raise TypeError("predict_scene: a plain nn.Module needs meta=ModelMeta(...) (classes, bands, mean, std)")
        return model, meta
    model = load_model(model_or_checkpoint)
    return model, meta if meta is not None else model.meta


def _vectorizer(out: Path) -> Callable[..., Any]:
    """The vectorizer for a vector ``out`` (imported lazily: it pulls in shapely and pyogrio)."""
    from ..vector import vectorize_raster

    return vectorize_raster


@contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    """Turn a failed write (a full or read-only disk) into one clear line naming the output folder."""
    try:
        yield
    except (RasterioIOError, OSError) as e:
        folder = target.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            raise UserError(f"--out: {folder}: the file system is read-only") from None
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (free is not None and free < 16 * 2**20):
            raise UserError(f"--out: {folder}: no space left on the device (writing {target.name} failed)") from None
        raise


@contextmanager
def _quiet_rasterio() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: a scene without a CRS gets one clear warning instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


class _Writer:
    """One writer thread with at most ``max_pending`` queued jobs (back-pressure bounds memory)."""

    def __init__(self, max_pending: int = 3) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segnext-write")
        self._pending: deque[Future[Any]] = deque()
        self._max = max_pending

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        while len(self._pending) >= self._max:
            self._pending.popleft().result()
        fut = self._pool.submit(fn, *args)
        self._pending.append(fut)
        return fut

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _write_core(classes_out: StreamedGeoTIFF, probs_out: StreamedGeoTIFF | None, core: FinishedCore) -> None:
    classes, probs, valid = core.numpy()
    window = core.rect.window()
    # rasterio's GDAL error handler is per thread: without an Env here, GDAL would print raw
    # messages ("_tiffWriteProc: No space left on device.") to stderr besides the exception
    with rasterio.Env():
        classes_out.write(classes[None], window)
        if probs_out is not None and probs is not None:
            probs_out.write(probs, window, valid)


def predict_scene(
    scene: str | Path,
    model_or_checkpoint: nn.Module | str | Path,
    out: str | Path,
    *,
    probs_out: str | Path | None = None,
    probs_mode: ProbsMode = "classes",
    tile_size: int = 1024,
    overlap: int = 256,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    bands: str | Sequence[int] | None = None,
    blend: BlendMode = "hann",
    tta: TTAMode = "none",
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    working_set: int | None = None,
    mask_out: str | Path | None = None,
    vector: VectorOptions | None = None,
    meta: ModelMeta | None = None,
    normalization: NormalizationMethod = "auto",
) -> PredictResult:
    """Segment ``scene`` tile by tile and write a class raster matching it pixel for pixel.

    Args:
        scene: any raster GDAL opens (GeoTIFF, COG, VRT, JP2, ``/vsi...``); read window by window.
        model_or_checkpoint: a checkpoint path, a :class:`~segnext_geo.models.SegNeXt`, or any
            ``nn.Module`` mapping normalised ``(N, C, H, W)`` float to logits ``(N, K, H, W)``
            (then pass ``meta``). The model is moved to ``device``.
        out: ``.tif`` class raster (uint8, nodata 255, colour table, ``class_names`` tag, COG with
            overviews), or a vector file (``.gpkg``, ``.parquet``, ``.fgb``, ``.geojson``, ``.shp``),
            which vectorises the class raster with :func:`segnext_geo.vector.vectorize_raster`.
        probs_out: also write probabilities as uint8 ``round(p * 255)``: K bands
            (``probs_mode="classes"``) or one band of the top-class probability (``"confidence"``).
        tile_size: tile side in px, rounded to a multiple of 32 (>= 64).
        overlap: px shared by neighbouring tiles, at most half a tile.
        batch_size: tiles per forward pass (does not change the output).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        bands: 1-based bands in model order (``"3,2,1"`` or a sequence); default: the model's.
        blend: ``hann`` (a cosine taper when the overlap is under a quarter tile), ``taper``, or
            ``none`` (centre crop).
        tta: ``none`` | ``flip`` (3 passes) | ``d4`` (8 passes), averaged as probabilities.
        workers: threads reading tiles ahead of the model (0: read in the main thread).
        overwrite: replace existing outputs.
        progress: a tqdm bar over tiles on stderr.
        working_set: largest super-tile side in px (bounds the accumulators); default: the largest
            <= 4096 whose accumulators fit in 256 MiB.
        mask_out: with a vector ``out``, keep the class raster here (else it is temporary).
        vector: options of ``vectorize_raster`` for a vector ``out`` (:class:`~segnext_geo.vector.VectorOptions`).
        meta: model metadata for a plain ``nn.Module`` (defaults to ``model.meta``).
        normalization: ``auto`` (mean/std for uint8, scene-wide 2-98 % stretch otherwise),
            ``meanstd`` or ``percentile``.

    Raises:
        UserError: bad input file, option or output path (one line naming it).
    """
    t0 = time.perf_counter()
    notes: list[str] = []

    def warn(msg: str) -> None:
        notes.append(msg)
        log.warning(msg)

    # ---- options and outputs, checked before any heavy work ----
    probs_mode = _choice(probs_mode, ("classes", "confidence"), "--probs-mode")  # type: ignore[assignment]
    blend = _choice(blend, ("hann", "taper", "none"), "--blend")  # type: ignore[assignment]
    tta = _choice(tta, ("none", "flip", "d4"), "--tta")  # type: ignore[assignment]
    normalization = _choice(normalization, ("auto", "meanstd", "percentile"), "--normalization")  # type: ignore[assignment]
    if int(batch_size) < 1:
        raise UserError(f"--batch-size: must be at least 1, got {batch_size}")
    if int(workers) < 0:
        raise UserError(f"--workers: must be 0 or more, got {workers}")
    if int(tile_size) < MIN_TILE:
        raise UserError(f"--tile-size: {tile_size} px is too small; use at least {MIN_TILE} px")
    tile = round_tile_size(int(tile_size))
    if tile != int(tile_size):
        warn(f"--tile-size: rounded {tile_size} to {tile} px (a multiple of 32)")
    if not 0 <= int(overlap) <= tile // 2:
        raise UserError(f"--overlap: must be between 0 and half the tile size ({tile // 2} px), got {overlap}")
    if working_set is not None and int(working_set) < MIN_TILE:
        raise UserError(f"--working-set: must be at least {MIN_TILE} px, got {working_set}")
    band_choice = parse_bands(bands)

    out_path = Path(out)
    suffix = out_path.suffix.lower()
    is_vector = suffix in VECTOR_SUFFIXES
    if not is_vector and suffix not in RASTER_SUFFIXES:
        raise UserError(
            f"--out: {out_path}: unsupported extension {suffix or '(none)'}; use .tif for a class raster "
            f"or {', '.join(VECTOR_SUFFIXES)} for polygons"
        )
    check_output(out_path, overwrite, "--out")
    probs_path = Path(probs_out) if probs_out is not None else None
    if probs_path is not None:
        if probs_path.suffix.lower() not in RASTER_SUFFIXES:
            raise UserError(f"--probs-out: {probs_path}: must be a .tif file")
        check_output(probs_path, overwrite, "--probs-out")
    mask_path = Path(mask_out) if mask_out is not None else None
    if mask_path is not None:
        if not is_vector:
            raise UserError("--mask-out: only used when --out is a vector file (the class raster is --out itself)")
        if mask_path.suffix.lower() not in RASTER_SUFFIXES:
            raise UserError(f"--mask-out: {mask_path}: must be a .tif file")
        check_output(mask_path, overwrite, "--mask-out")
    if vector is not None and not is_vector:
        raise UserError(f"--out: {out_path}: vectorize options (--min-area, --simplify ...) need a vector output")
    vectorize = _vectorizer(out_path) if is_vector else None
    with _quiet_rasterio():
        check_scene(scene)

    # ---- model, device and scene ----
    model, meta = _resolve_model(model_or_checkpoint, meta)
    if meta.num_classes > 255:
        raise UserError(f"--checkpoint: {meta.num_classes} classes do not fit a uint8 class raster (at most 255)")
    dev = pick_device(device)
    with _quiet_rasterio():
        info = open_scene(scene, band_choice, meta.bands, needed=len(meta.bands))
    if info.crs is None and not info.gcps:
        warn(f"{info.path}: has no CRS; the output keeps the same pixel grid without a CRS")
    ws = int(working_set) if working_set is not None else auto_working_set(meta.num_classes)
    grid = TileGrid(info.height, info.width, tile, int(overlap), ws)

    raster_path = out_path
    temp_mask = False
    if is_vector:
        if mask_path is not None:
            raster_path = mask_path
        else:
            raster_path = out_path.with_name(f".{out_path.stem}.mask-{os.getpid()}.tif")
            temp_mask = True
    try:
        with (
            sigterm_as_interrupt(),
            _quiet_rasterio(),
            rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
            _write_errors(raster_path),
        ):
            pixels, skipped = _stream(
                info,
                model,
                meta,
                grid,
                raster_path,
                probs_path,
                probs_mode=probs_mode,
                blend=blend,
                tta=tta,
                device=dev,
                batch_size=int(batch_size),
                workers=int(workers),
                overwrite=overwrite or temp_mask,
                progress=progress,
                normalization=normalization,
            )
        if pixels == 0:
            warn(f"{info.path}: no valid pixels (every pixel is nodata); wrote an all-nodata output")
        polygons = None
        if vectorize is not None:
            vres = vectorize(
                raster_path,
                out_path,
                vector,
                probs=probs_path,
                class_names=list(meta.class_names),
                overwrite=overwrite,
                source=str(scene),
                progress=progress,
            )
            polygons = int(vres.count)
    finally:
        if temp_mask:
            raster_path.unlink(missing_ok=True)
    return PredictResult(
        out=out_path,
        mask_path=mask_path,
        probs_path=probs_path,
        pixels=pixels,
        tiles=len(grid),
        skipped_tiles=skipped,
        elapsed_s=time.perf_counter() - t0,
        warnings=notes,
        polygons=polygons,
    )


def _specs(info: SceneInfo, meta: ModelMeta, provenance: str, probs_mode: ProbsMode) -> tuple[RasterSpec, RasterSpec]:
    base: dict[str, Any] = {"width": info.width, "height": info.height, "crs": info.crs, "transform": info.transform}
    base |= {"gcps": info.gcps, "gcp_crs": info.gcp_crs}
    names = json_tag(list(meta.class_names))
    classes = RasterSpec(
        count=1,
        nodata=255,
        colormap=class_colormap(meta.palette),
        tags={"class_names": names, "segnext_geo": provenance},
        descriptions=("class",),
        overview_resampling="NEAREST",
        **base,
    )
    confidence = probs_mode == "confidence"
    probs = RasterSpec(
        count=1 if confidence else meta.num_classes,
        nodata=None,
        mask=True,
        tags={"class_names": names, "probs_mode": probs_mode, "scale": "probability = value / 255"},
        descriptions=("confidence",) if confidence else tuple(meta.class_names),
        overview_resampling="AVERAGE",
        **base,
    )
    return classes, probs


def _stream(
    info: SceneInfo,
    model: nn.Module,
    meta: ModelMeta,
    grid: TileGrid,
    raster_path: Path,
    probs_path: Path | None,
    *,
    probs_mode: ProbsMode,
    blend: BlendMode,
    tta: TTAMode,
    device: torch.device,
    batch_size: int,
    workers: int,
    overwrite: bool,
    progress: bool,
    normalization: NormalizationMethod,
) -> tuple[int, int]:
    """Run the tiles of ``grid`` and write the outputs; returns (valid pixels, skipped tiles)."""
    from tqdm import tqdm

    pixels = skipped = 0
    with ExitStack() as stack:
        classes_tmp = stack.enter_context(atomic_output(raster_path, overwrite, "--out"))
        probs_tmp = stack.enter_context(atomic_output(probs_path, overwrite, "--probs-out")) if probs_path else None
        source = stack.enter_context(SceneSource(info))
        norm = compute_normalization(source, meta.mean, meta.std, normalization)
        provenance = json_tag(
            {
                "scene": info.path,
                "bands": list(info.bands),
                "tile_size": grid.tile_size,
                "overlap": grid.overlap,
                "blend": effective_mode(blend, grid.tile_size, grid.overlap),
                "tta": tta,
                "normalization": norm.describe(),
            }
        )
        classes_spec, probs_spec = _specs(info, meta, provenance, probs_mode)
        classes_out = StreamedGeoTIFF(classes_tmp, _scratch(raster_path), classes_spec)
        stack.callback(classes_out.close)
        probs_writer: StreamedGeoTIFF | None = None
        if probs_tmp is not None and probs_path is not None:
            probs_writer = StreamedGeoTIFF(probs_tmp, _scratch(probs_path), probs_spec)
            stack.callback(probs_writer.close)
        writer = _Writer()
        stack.callback(writer.close)
        partials = PartialStore(raster_path.parent, writer.submit)
        stack.callback(partials.close)
        runner = TileRunner(model, meta.num_classes, device, tta)
        stitcher = Stitcher(grid, meta.num_classes, blend, device, probs_mode if probs_writer else None, partials)
        loader = stack.enter_context(
            TileLoader(source, norm, grid.tiles, workers, prefetch=batch_size + 2 * max(1, workers))
        )
        bar = stack.enter_context(
            tqdm(total=len(grid), unit="tile", desc=Path(info.path).name, disable=not progress, dynamic_ncols=True)
        )
        stack.enter_context(torch.inference_mode())
        current = -1

        def finish_core() -> None:
            nonlocal pixels
            core = stitcher.finish()
            pixels += core.valid_pixels
            writer.submit(_write_core, classes_out, probs_writer, core)

        def run(batch: list[TileData]) -> None:
            nonlocal current, skipped
            images = [td.image for td in batch if td.image is not None]
            probs = runner(images) if images else iter(())
            for td in batch:
                p = next(probs) if td.image is not None else None
                skipped += p is None
                if td.tile.supertile != current:
                    if current >= 0:
                        finish_core()
                    current = td.tile.supertile
                    stitcher.start(grid.supertiles[current])
                stitcher.add(td.tile, p, td.valid)
                bar.update(1)

        batch: list[TileData] = []
        n_images = 0
        for td in loader:
            batch.append(td)
            n_images += td.image is not None
            if n_images == batch_size:
                run(batch)
                batch, n_images = [], 0
        run(batch)
        finish_core()
        writer.drain()
        classes_out.finish()
        if probs_writer is not None:
            probs_writer.finish()
    return pixels, skipped


def _scratch(path: Path) -> Path:
    return path.with_name(f".{path.stem}.scratch-{os.getpid()}.tif")
