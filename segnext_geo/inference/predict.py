"""``predict_scene``: a scene of any size -> a georeferenced class raster (and polygons), in bounded memory.

It checks the paths, resolves the model into an :class:`~.runner.InferenceRunner`, plans the
tiles and the memory (:func:`~.options.plan_memory`), runs the pipeline of :mod:`.pipeline`
(reader -> runner -> stitcher -> writer) and, for a vector output, vectorizes the class raster.
Outputs appear at their paths only when complete (temporary file + rename; Ctrl-C and SIGTERM
leave nothing behind).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window
from torch import nn

from ..errors import UserError
from ..models import ModelMeta, load_model
from ..outputs import check_outputs, sigterm_as_interrupt
from ..raster.aoi import SceneArea, locate_aoi
from ..raster.gsd import GsdPlan, ResampleGrid, plan_gsd, scene_gsd
from ..raster.normalize import Normalization, compute_normalization
from ..raster.source import SceneInfo, SceneSource, check_scene, open_scene
from ..raster.stac import StacScene
from ..raster.writer import RasterSpec
from .blend import effective_mode
from .grid import Rect, TileGrid
from .inputs import AreaMissesScene, SceneInput, resolve_input
from .metadata import model_digest, model_name, output_specs, provenance_gsd, provenance_tags
from .options import GDAL_CACHE_BYTES, RASTER_SUFFIXES, VECTOR_SUFFIXES, MemoryPlan, PredictOptions, plan_memory
from .pipeline import open_stages, stream
from .runner import InferenceRunner

__all__ = ["AreaMissesScene", "PredictResult", "predict_scene"]

log = logging.getLogger("segnext_geo.inference")

ModelInput = nn.Module | InferenceRunner | str | Path


@dataclass
class PredictResult:
    """What :func:`predict_scene` wrote.

    ``out``: the class raster (or the vector file); ``mask_path``: the class raster kept beside a
    vector output (``None`` when it was temporary); ``probs_path``: the probability raster;
    ``pixels``: valid (non-nodata) pixels; ``tiles``/``skipped_tiles``: tiles in the grid and tiles
    skipped because all their pixels are nodata; ``polygons``: features written (vector output);
    ``forward_s``: seconds inside model forwards (timed by the runner); ``plan``: the tile,
    working set and estimated peak memory used; ``runner``: how the model ran; ``window``: with an
    area of interest, the scene window the outputs cover (``None``: the whole scene); ``gsd``: what
    ``--gsd`` decided and why (one line, also logged).
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
    forward_s: float = 0.0
    plan: MemoryPlan | None = None
    runner: dict[str, object] = field(default_factory=dict)
    window: Window | None = None
    gsd: str = ""


def predict_scene(
    scene: str | Path | StacScene,
    model_or_checkpoint: ModelInput,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    probs_out: str | Path | None = None,
    mask_out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    meta: ModelMeta | None = None,
) -> PredictResult:
    """Segment ``scene`` tile by tile and write a class raster matching it pixel for pixel.

    Args:
        scene: any raster GDAL opens (GeoTIFF, COG, VRT, JP2, ``/vsi...``, an http(s) URL), read
            window by window; or a STAC Item (a ``.json`` file, an http(s) URL, or a
            :class:`~segnext_geo.raster.stac.StacScene`): its asset is chosen by
            ``options.asset`` and its id and datetime go into the outputs' tags and ``source``.
        model_or_checkpoint: a checkpoint (path, or any name :func:`~segnext_geo.models.load_model`
            takes), a :class:`~segnext_geo.models.SegNeXt`, any ``nn.Module`` mapping normalised
            ``(N, C, H, W)`` float to logits ``(N, K, H, W)`` (then pass ``meta``), or a ready
            :class:`~.runner.InferenceRunner` (its device, precision, compile and TTA win).
        out: ``.tif`` class raster (uint8, nodata 255, colour table, ``class_names`` and provenance
            tags, COG with overviews), or a vector file (``.gpkg``, ``.parquet``, ``.fgb``,
            ``.geojson``, ``.shp``) vectorized from it with ``options.vector``.
        options: how to predict (:class:`~.options.PredictOptions`; default: its defaults).
        probs_out: also write probabilities as uint8 ``round(p * 255)``: K bands (``probs_mode
            classes``) or one band of the top-class probability (``confidence``).
        mask_out: with a vector ``out``, keep the class raster here (else it is temporary).
        overwrite: replace existing outputs (never an input: that is refused regardless).
        progress: a tqdm bar over tiles on stderr.
        meta: model metadata for a plain ``nn.Module`` (default ``model.meta``).

    Raises:
        UserError: bad input file, option or output path (one line naming it).
        AreaMissesScene: the area of interest (``options.bbox``/``options.aoi``) does not overlap
            the scene (a :class:`UserError`; ``batch`` records the scene as skipped).
    """
    t0 = time.perf_counter()
    opts = options if options is not None else PredictOptions()
    run = open_run(scene, model_or_checkpoint, out, probs_out, mask_out, opts, overwrite, meta)
    src, paths, runner, meta, info, area = run.src, run.paths, run.runner, run.meta, run.info, run.area
    plan, grid, notes = _plan(info, meta, runner, opts, paths, area, run.resample)
    notes += run.notes
    forward_before = runner.forward_seconds()
    with _run_environment(paths.raster), src.environment(), SceneSource(info) as source:
        norm, specs = run.outputs(source, model_or_checkpoint, grid, opts)
        with (
            open_stages(
                source,
                norm,
                grid,
                runner,
                opts,
                paths.raster,
                paths.probs,
                specs,
                paths.overwrite,
                area,
                run.resample,
            ) as stages,
            _progress_bar(len(grid), src.label, progress) as bar,
        ):
            counts = stream(stages, grid, opts.batch_size, bar.update)
    run.note_if_empty(counts.pixels, notes)
    polygons = _vectorize(paths, meta, opts, src.source, overwrite, progress)
    return PredictResult(
        out=paths.out,
        mask_path=paths.mask,
        probs_path=paths.probs,
        pixels=counts.pixels,
        tiles=len(grid),
        skipped_tiles=counts.skipped,
        elapsed_s=time.perf_counter() - t0,
        warnings=notes,
        polygons=polygons,
        forward_s=runner.forward_seconds() - forward_before,
        plan=plan,
        runner=runner.describe(),
        window=area.window if area is not None else None,
        gsd=run.gsd_line,
    )


@dataclass
class OpenedRun:
    """What a predict run knows before any tile runs: the resolved input, checked output paths,
    the runner and model metadata, the opened scene, the area of interest on it, and what
    ``--gsd`` decided (the plan, the model grid or ``None``, its one-line reason). Shared by
    :func:`predict_scene` and the distributed driver, so both open a scene exactly alike.
    """

    src: SceneInput
    paths: _Paths
    runner: InferenceRunner
    meta: ModelMeta
    info: SceneInfo
    area: SceneArea | None
    gsd: GsdPlan
    resample: ResampleGrid | None
    gsd_line: str
    notes: list[str]

    def outputs(
        self, source: SceneSource, model: ModelInput, grid: TileGrid, opts: PredictOptions
    ) -> tuple[Normalization, tuple[RasterSpec, RasterSpec]]:
        """The scene-wide normalisation and the output specs: the provenance tags, cut to the
        area's window, with the STAC Item's tags."""
        norm = compute_normalization(source, self.meta.mean, self.meta.std, opts.normalization)
        made = _provenance(model, self.meta, self.runner, grid, opts, norm.describe(), self.info.bands)
        made["gsd"] = provenance_gsd(self.gsd)
        specs = output_specs(self.info, self.meta, provenance_tags(made), opts.probs_mode)
        return norm, _framed(specs, self.info, self.area, self.src.tags)

    def note_if_empty(self, pixels: int, notes: list[str]) -> None:
        """Add (and log) the all-nodata note when no pixel was valid."""
        if pixels == 0:
            where = f"{self.src.name} inside {self.area.label}" if self.area is not None else self.src.name
            notes.append(f"{where}: no valid pixels (every pixel is nodata); wrote an all-nodata output")
            log.warning(notes[-1])


def open_run(
    scene: str | Path | StacScene,
    model_or_checkpoint: ModelInput,
    out: str | Path,
    probs_out: str | Path | None,
    mask_out: str | Path | None,
    opts: PredictOptions,
    overwrite: bool,
    meta: ModelMeta | None = None,
) -> OpenedRun:
    """Resolve the input, check the outputs, build the runner, open the scene, place the area of
    interest and decide ``--gsd``: everything before the tile grid.

    Raises:
        UserError: bad input, option or output path (one line naming it).
        AreaMissesScene: the area of interest does not overlap the scene.
    """
    src = resolve_input(scene, opts.asset)
    area_of_interest = opts.area()  # read the --aoi file before any work
    paths = _check_paths(src.local, model_or_checkpoint, out, probs_out, mask_out, opts, overwrite)
    with _quiet_rasterio(), src.environment():
        check_scene(src.path)
        runner, meta = _runner(model_or_checkpoint, meta, opts)
        bands = opts.bands if opts.bands is not None else src.bands
        info = open_scene(src.path, bands, meta.bands, needed=len(meta.bands), nodata=opts.nodata)
        area = None
        if area_of_interest is not None:
            area = locate_aoi(area_of_interest, info.crs, info.transform, info.width, info.height, src.name)
            if area.window is None:
                raise AreaMissesScene(f"{area_of_interest.label}: does not overlap {src.name}")
    gsd, resample, gsd_line, gsd_warns = _plan_gsd(info, meta, opts, area)
    notes = [gsd_line] if gsd_warns else []
    return OpenedRun(src, paths, runner, meta, info, area, gsd, resample, gsd_line, notes)


def _framed(
    specs: tuple[RasterSpec, RasterSpec], info: SceneInfo, area: SceneArea | None, tags: dict[str, str]
) -> tuple[RasterSpec, RasterSpec]:
    """The output specs cut to the area's window (same pixel size and CRS, the transform moved to
    the window's corner) and carrying ``tags`` (the STAC Item's) and the area's label."""
    extra = dict(tags)
    changes: dict[str, Any] = {}
    if area is not None and area.window is not None:
        w = area.window
        extra["AREA_OF_INTEREST"] = area.label
        extra["AREA_WINDOW"] = f"{int(w.col_off)},{int(w.row_off)},{int(w.width)},{int(w.height)}"
        changes = {
            "width": int(w.width),
            "height": int(w.height),
            "transform": info.transform @ Affine.translation(int(w.col_off), int(w.row_off)),
        }
    if not extra and not changes:
        return specs
    a, b = (replace(s, tags={**s.tags, **extra}, **changes) for s in specs)
    return a, b


@dataclass(frozen=True)
class _Paths:
    """Where a run writes: ``raster`` is the class raster (``out``, ``--mask-out`` or a hidden
    temporary beside a vector ``out``); ``overwrite`` applies to ``raster`` and ``probs``."""

    out: Path
    raster: Path
    probs: Path | None
    mask: Path | None
    overwrite: bool

    @property
    def vector(self) -> bool:
        return self.out.suffix.lower() in VECTOR_SUFFIXES


def _plan_gsd(
    info: SceneInfo, meta: ModelMeta, opts: PredictOptions, area: SceneArea | None = None
) -> tuple[GsdPlan, ResampleGrid | None, str, bool]:
    """What ``--gsd`` decides for this scene and model: the plan, the model grid (``None``: the
    scene's own grid), one line saying why (logged) and whether that line is a warning (a known
    model GSD that ``auto`` cannot honour because the scene has no CRS).

    The model grid covers the whole scene, or with an area of interest the area's window (its
    corner is the model grid's origin; the scene's GSD is measured over the whole scene)."""
    scene = scene_gsd(info.crs, info.transform, info.width, info.height)
    gsd = plan_gsd(opts.gsd, meta.gsd_m, scene, info.path)
    scene_m = f"{scene.mean:.4g} m" if scene is not None else "unknown"
    model_m = f"{meta.gsd_m:.4g} m" if meta.gsd_m is not None else "unknown or varies"
    line = f"--gsd {opts.gsd}: {gsd.reason} (scene GSD {scene_m}, model GSD {model_m})"
    if gsd.target_m is None or gsd.scene is None:
        warns = scene is None and meta.gsd_m is not None and opts.gsd == "auto"
        log.log(logging.WARNING if warns else logging.INFO, line)
        return gsd, None, line, warns
    log.info(line)
    region = Window(0, 0, info.width, info.height)
    if area is not None and area.window is not None:
        region = area.window
    return gsd, ResampleGrid.create(region, gsd.scene, gsd.target_m), line, False


def _plan(
    info: SceneInfo,
    meta: ModelMeta,
    runner: InferenceRunner,
    opts: PredictOptions,
    paths: _Paths,
    area: SceneArea | None = None,
    resample: ResampleGrid | None = None,
) -> tuple[MemoryPlan, TileGrid, list[str]]:
    """The memory plan, the tile grid and the run's notes (logged here); decides ``compile="auto"``.

    With an area of interest the grid is the whole scene's, cut to the tile rows and columns
    over the area's window (:class:`~.grid.TileGrid` ``region``). With ``resample`` the grid
    covers its whole model grid (with an area, the model grid over the area's window)."""
    notes = list(info.notes)  # already logged by open_scene
    new: list[str] = []
    if info.crs is None and not info.gcps:
        new.append(f"{info.path}: has no CRS; the output keeps the same pixel grid without a CRS")
    if opts.tile != opts.tile_size:
        new.append(f"--tile-size: rounded {opts.tile_size} to {opts.tile} px (a multiple of 32)")
    probs_bands = 0 if paths.probs is None else (1 if opts.probs_mode == "confidence" else meta.num_classes)
    height, width = resample.model_shape if resample is not None else (info.height, info.width)
    plan = plan_memory(
        opts,
        height,
        width,
        classes=meta.num_classes,
        bands=len(info.bands),
        probs_bands=probs_bands,
        per_image=runner.per_image,
        variant=meta.variant if runner.segnext else None,
        model_bytes=runner.weight_bytes(),
        gpu_bytes=runner.ops.total_memory(),
        resampled=resample is not None,
    )
    new += plan.notes
    for note in new:
        log.warning(note)
    if resample is not None:
        grid = TileGrid(height, width, plan.tile, plan.overlap, plan.working_set)
        runner.plan(len(grid), (grid.th, grid.tw))
        return plan, grid, notes + new
    region = None
    if area is not None and area.window is not None:
        w = area.window
        region = Rect(int(w.row_off), int(w.col_off), int(w.row_off + w.height), int(w.col_off + w.width))
    grid = TileGrid(info.height, info.width, plan.tile, plan.overlap, plan.working_set, region)
    run = len(grid) if area is None else int(area.tiles_touching([t.rect for t in grid.tiles]).sum())
    runner.plan(run, (grid.th, grid.tw))
    return plan, grid, notes + new


def _provenance(
    model_or_checkpoint: ModelInput,
    meta: ModelMeta,
    runner: InferenceRunner,
    grid: TileGrid,
    opts: PredictOptions,
    normalization: dict[str, object],
    bands: tuple[int, ...],
) -> dict[str, object]:
    """What the metadata tags record about how the outputs were made (:mod:`.metadata`)."""
    how = runner.describe()
    made: dict[str, object] = {
        "model": model_name(model_or_checkpoint, meta),
        "model_sha256": model_digest(runner.source_model),
        "tile_size": grid.tile_size,
        "overlap": grid.overlap,
        "blend": effective_mode(opts.blend, grid.tile_size, grid.overlap),
        **{k: how[k] for k in ("tta", "precision", "device", "compiled")},
        "normalization": normalization,
        "bands": list(bands),
    }
    return made


@contextmanager
def _run_environment(raster: Path) -> Iterator[None]:
    """SIGTERM as Ctrl-C, quiet georeferencing warnings, GDAL's cache size, clean write errors."""
    with (
        sigterm_as_interrupt(),
        _quiet_rasterio(),
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        _write_errors(raster),
    ):
        yield


def _progress_bar(tiles: int, label: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=tiles, unit="tile", desc=label, disable=not progress, dynamic_ncols=True)


def _check_paths(
    scene: str | Path | None,
    model_or_checkpoint: ModelInput,
    out: str | Path,
    probs_out: str | Path | None,
    mask_out: str | Path | None,
    opts: PredictOptions,
    overwrite: bool,
) -> _Paths:
    """Check every output before any work is done."""
    out_path = Path(out)
    suffix = out_path.suffix.lower()
    vector = suffix in VECTOR_SUFFIXES
    if not vector and suffix not in RASTER_SUFFIXES:
        raise UserError(
            f"--out: {out_path}: unsupported extension {suffix or '(none)'}; use .tif for a class raster "
            f"or {', '.join(VECTOR_SUFFIXES)} for polygons"
        )
    probs_path = Path(probs_out) if probs_out is not None else None
    if probs_path is not None and probs_path.suffix.lower() not in RASTER_SUFFIXES:
        raise UserError(f"--probs-out: {probs_path}: must be a .tif file")
    mask_path = Path(mask_out) if mask_out is not None else None
    if mask_path is not None:
        if not vector:
            raise UserError("--mask-out: only used when --out is a vector file (the class raster is --out itself)")
        if mask_path.suffix.lower() not in RASTER_SUFFIXES:
            raise UserError(f"--mask-out: {mask_path}: must be a .tif file")
    if opts.vector is not None and not vector:
        flags = _vector_flags(opts) or "vectorize options"
        raise UserError(f"{flags}: only apply to polygons; --out {out_path} is a raster (use .gpkg, .fgb ...)")
    inputs: list[str | Path] = [scene] if scene is not None else []
    if isinstance(model_or_checkpoint, str | Path):
        inputs.append(model_or_checkpoint)
    given = [("--out", out_path), ("--probs-out", probs_path), ("--mask-out", mask_path)]
    check_outputs(inputs, given, overwrite)
    if vector and mask_path is None:  # a hidden, temporary class raster beside the vector output
        temp = out_path.with_name(f".{out_path.stem}.mask-{os.getpid()}.tif")
        return _Paths(out_path, temp, probs_path, None, True)
    return _Paths(out_path, mask_path if mask_path is not None else out_path, probs_path, mask_path, overwrite)


def _vector_flags(opts: PredictOptions) -> str:
    """The CLI flags of the vector options that differ from their defaults, e.g. ``--min-area, --simplify``."""
    from ..vector.options import VectorOptions

    assert opts.vector is not None
    default = VectorOptions()
    names = [n for n in VectorOptions.__dataclass_fields__ if getattr(opts.vector, n) != getattr(default, n)]
    return ", ".join("--" + n.replace("_", "-") for n in names)


def _runner(
    model_or_checkpoint: ModelInput, meta: ModelMeta | None, opts: PredictOptions
) -> tuple[InferenceRunner, ModelMeta]:
    """An :class:`InferenceRunner` for the model (a given runner is used as it is) and its metadata."""
    if isinstance(model_or_checkpoint, InferenceRunner):
        runner = model_or_checkpoint
        meta = meta if meta is not None else runner.meta
    else:
        model = model_or_checkpoint if isinstance(model_or_checkpoint, nn.Module) else load_model(model_or_checkpoint)
        meta = meta if meta is not None else getattr(model, "meta", None)
        if not isinstance(meta, ModelMeta):
            raise TypeError("predict_scene: a plain nn.Module needs meta=ModelMeta(...) (classes, bands, mean, std)")
        if meta.num_classes > 255:
            raise UserError(f"--checkpoint: {meta.num_classes} classes do not fit a uint8 class raster (at most 255)")
        runner = InferenceRunner(
            model,
            opts.device,
            precision=opts.precision,
            compile=opts.compile,
            deterministic=opts.deterministic,
            tta=opts.tta,
            num_classes=meta.num_classes,
        )
    if not isinstance(meta, ModelMeta):
        raise TypeError("predict_scene: the runner's model has no ModelMeta; pass meta=ModelMeta(...)")
    if runner.num_classes is None:
        runner.num_classes = meta.num_classes
    return runner, meta


def _vectorize(
    paths: _Paths, meta: ModelMeta, opts: PredictOptions, scene: str | Path, overwrite: bool, progress: bool
) -> int | None:
    """Vectorize the class raster into a vector ``out`` (then drop a temporary class raster)."""
    if not paths.vector:
        return None
    from ..vector import vectorize_raster

    try:
        result = vectorize_raster(
            paths.raster,
            paths.out,
            opts.vector,
            probs=paths.probs,
            class_names=list(meta.class_names),
            overwrite=overwrite,
            source=str(scene),
            progress=progress,
        )
        return int(result.count)
    finally:
        if paths.mask is None:
            paths.raster.unlink(missing_ok=True)


@contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    """Turn a failed write (a full or read-only disk) into one clear line naming the output folder."""
    try:
        yield
    except (RasterioIOError, OSError) as e:
        folder = target.parent
        try:
            free: int | None = shutil.disk_usage(folder).free
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
