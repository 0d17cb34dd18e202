"""How to predict: :class:`PredictOptions`, one frozen, typed, validated object.

``predict_scene``, ``run_batch`` and both CLI commands build one :class:`PredictOptions` and hand
it down unchanged; every error names the command-line flag (``--overlap: ...``), never the field.
This module also holds the output suffix tables and the memory model that picks the working set
(and, when needed, a smaller tile) for a memory budget (:func:`plan_memory`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, get_args

from ..errors import UserError
from ..raster.aoi import AreaOfInterest, parse_bbox, read_aoi
from ..raster.gsd import GsdMode, parse_gsd
from ..raster.normalize import NormalizationMethod
from ..raster.source import parse_bands
from ..validate import as_bool, as_choice, as_int
from ..vector.options import VectorOptions
from .blend import BlendMode
from .grid import MIN_TILE, TileGrid, round_tile_size
from .runner import CompileMode, Precision
from .stitcher import ProbsMode
from .tta import TTAMode

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "RASTER_SUFFIXES",
    "VECTOR_SUFFIXES",
    "MemoryPlan",
    "Peak",
    "PredictOptions",
    "auto_working_set",
    "estimate_peak",
    "parse_size",
    "plan_memory",
]

RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".gpkg", ".parquet", ".fgb", ".geojson", ".shp")
MAX_SUPERTILE = 4096
#: Accumulators of the automatic working set, before the budget check (larger super-tiles only
#: save partial-sum hand-offs, which are cheap).
ACCUMULATOR_BYTES = 256 * 2**20
#: Default memory budget of a predict process (``--max-memory``).
DEFAULT_MEMORY_BUDGET = 3 * 2**30
#: Smallest tile the memory plan shrinks to.
MIN_PLAN_TILE = 256


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(value: str | int | float, flag: str = "--max-memory") -> int:
    """``"3G"``, ``"2.5GiB"``, ``"512M"``, ``"800MB"`` or a number of bytes -> bytes (binary units).

    Raises:
        UserError: not a positive size.
    """
    if isinstance(value, bool):
        raise UserError(f"{flag}: {value!r} is not a size like 3G or 512M")
    if isinstance(value, int | float):
        n = float(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise UserError(f"{flag}: {value!r} is not a size like 3G or 512M")
        n = float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())
    if not math.isfinite(n) or n <= 0:
        raise UserError(f"{flag}: must be a positive size, got {value!r}")
    return int(n)


@dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` and ``batch`` run (every field checked in ``__post_init__``; errors name the flag).

    Attributes:
        tile_size: tile side in px, rounded to a multiple of 32 (>= 64). ``--tile-size``.
        overlap: px shared by neighbouring tiles, at most half a tile. ``--overlap``.
        batch_size: tiles per forward (does not change the output on the CPU or with
            ``deterministic``). ``--batch-size``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``. ``--device``.
        bands: 1-based bands in model order (``"3,2,1"`` or a sequence; stored as a tuple);
            ``None``: the model's. ``--bands``.
        nodata: a value to treat as nodata in every selected band, overriding the file's.
            ``--nodata``.
        blend: ``hann`` | ``taper`` | ``none``. ``--blend``.
        tta: ``none`` | ``flip`` | ``d4``. ``--tta``.
        working_set: largest super-tile side in px; ``None``: automatic (:func:`plan_memory`).
            ``--working-set``.
        max_memory: memory budget of the process in bytes (``"3G"`` is accepted); the
            automatic working set, and if needed a smaller tile, keep the estimated peak under
            it. ``--max-memory``.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``. ``--precision``.
        compile: ``off`` | ``auto`` | ``on``. ``--compile``.
        deterministic: image-by-image forwards and deterministic cuDNN: the same bytes whatever
            the batch size on every device. ``--deterministic``.
        normalization: ``auto`` | ``meanstd`` | ``percentile``. ``--normalization``.
        probs_mode: ``classes`` (K bands) | ``confidence`` (1 band) for ``--probs-out``.
            ``--probs-mode``.
        workers: threads reading tiles while the model runs (0: read in the main thread).
            ``--workers``.
        vector: vectorize options for a vector output (``--min-area``, ``--simplify`` ...).
        asset: the asset of a STAC Item to read (default: ``visual``, else red/green/blue by
            ``eo:bands`` common names). ``--asset``.
        bbox: area of interest ``(minx, miny, maxx, maxy)`` (or ``"MINX,MINY,MAXX,MAXY"``) in
            ``bbox_crs``. ``--bbox``.
        bbox_crs: the CRS of ``bbox`` (default EPSG:4326: longitude, latitude). ``--bbox-crs``.
        aoi: area of interest: a vector file (any format GDAL reads, any CRS; its polygons are
            unioned). ``--aoi``.
        aoi_layer: the layer of ``aoi`` to read (needed when it has several). ``--aoi-layer``.
        gsd: ``"auto"`` | ``"native"`` | a ground sample distance in metres (``"0.3"`` and
            ``"0.3m"`` are accepted; stored as ``float``). ``auto`` resamples a scene to the model's
            training GSD when that is known and differs by more than
            :data:`~segnext_geo.raster.gsd.DEFAULT_TOLERANCE`; ``native`` never resamples; metres
            force the GSD the model sees. ``--gsd``.
    """

    tile_size: int = 1024
    overlap: int = 256
    batch_size: int = 8
    device: str = "auto"
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    blend: BlendMode = "hann"
    tta: TTAMode = "none"
    working_set: int | None = None
    max_memory: int = DEFAULT_MEMORY_BUDGET
    precision: Precision = "auto"
    compile: CompileMode = "auto"
    deterministic: bool = False
    normalization: NormalizationMethod = "auto"
    probs_mode: ProbsMode = "classes"
    workers: int = 2
    vector: VectorOptions | None = field(default=None)
    asset: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str = "EPSG:4326"
    aoi: str | None = None
    aoi_layer: str | None = None
    gsd: GsdMode = "auto"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        tile = as_int(self.tile_size, "--tile-size", "a number of pixels")
        if tile < MIN_TILE:
            raise UserError(f"--tile-size: {tile} px is too small; use at least {MIN_TILE} px")
        put("tile_size", tile)
        overlap = as_int(self.overlap, "--overlap", "a number of pixels")
        if not 0 <= overlap <= self.tile // 2:
            raise UserError(f"--overlap: must be between 0 and half the tile size ({self.tile // 2} px), got {overlap}")
        put("overlap", overlap)
        batch = as_int(self.batch_size, "--batch-size", "a number of tiles")
        if batch < 1:
            raise UserError(f"--batch-size: must be at least 1, got {batch}")
        put("batch_size", batch)
        if not isinstance(self.device, str) or not self.device.strip():
            raise UserError(f"--device: {self.device!r} is not a device (use auto, cpu, cuda or cuda:N)")
        put("bands", parse_bands(self.bands))
        if self.nodata is not None:
            if isinstance(self.nodata, bool):
                raise UserError(f"--nodata: {self.nodata!r} is not a number")
            try:
                put("nodata", float(self.nodata))
            except (TypeError, ValueError):
                raise UserError(f"--nodata: {self.nodata!r} is not a number") from None
        put("blend", as_choice(self.blend, get_args(BlendMode), "--blend"))
        put("tta", as_choice(self.tta, get_args(TTAMode), "--tta"))
        if self.working_set is not None:
            ws = as_int(self.working_set, "--working-set", "a number of pixels")
            if ws < MIN_TILE:
                raise UserError(f"--working-set: must be at least {MIN_TILE} px, got {ws}")
            put("working_set", ws)
        put("max_memory", parse_size(self.max_memory))
        put("precision", as_choice(self.precision, get_args(Precision), "--precision"))
        put("compile", as_choice(self.compile, get_args(CompileMode), "--compile"))
        put("deterministic", as_bool(self.deterministic, "--deterministic"))
        put("normalization", as_choice(self.normalization, get_args(NormalizationMethod), "--normalization"))
        put("probs_mode", as_choice(self.probs_mode, get_args(ProbsMode), "--probs-mode"))
        workers = as_int(self.workers, "--workers", "a number of threads")
        if workers < 0:
            raise UserError(f"--workers: must be 0 or more, got {workers}")
        put("workers", workers)
        if self.vector is not None and not isinstance(self.vector, VectorOptions):
            raise TypeError(f"PredictOptions.vector must be a VectorOptions, not {type(self.vector).__name__}")
        if self.asset is not None and (not isinstance(self.asset, str) or not self.asset.strip()):
            raise UserError(f"--asset: {self.asset!r} is not an asset name")
        if isinstance(self.gsd, bool) or not isinstance(self.gsd, str | int | float):
            raise UserError(f"--gsd: {self.gsd!r} is not auto, native or a ground sample distance in metres")
        put("gsd", parse_gsd(self.gsd))
        self._check_area(put)

    def _check_area(self, put: Any) -> None:
        """Validate ``bbox``/``bbox_crs``/``aoi``/``aoi_layer`` (the file is read by :meth:`area`)."""
        if not isinstance(self.bbox_crs, str) or not self.bbox_crs.strip():
            raise UserError(f"--bbox-crs: {self.bbox_crs!r} is not a CRS (e.g. EPSG:4326)")
        if self.bbox is not None:
            text = self.bbox if isinstance(self.bbox, str) else ",".join(str(v) for v in self.bbox)
            area = parse_bbox(text, self.bbox_crs)  # raises naming --bbox / --bbox-crs
            put("bbox", tuple(float(v) for v in area.geometry.bounds))
        elif self.bbox_crs != "EPSG:4326":
            raise UserError("--bbox-crs: only applies with --bbox")
        if self.aoi is not None:
            if self.bbox is not None:
                raise UserError("--bbox, --aoi: give one area of interest, not both")
            put("aoi", str(self.aoi))
            if not self.aoi.strip():
                raise UserError("--aoi: an empty file name")
        if self.aoi_layer is not None and self.aoi is None:
            raise UserError("--aoi-layer: only applies with --aoi")

    def area(self) -> AreaOfInterest | None:
        """The area of interest (``bbox`` or ``aoi``, the file read now), or ``None``.

        Raises:
            UserError: the ``--aoi`` file is missing, unreadable or has no polygon.
        """
        if self.bbox is not None:
            return parse_bbox(",".join(repr(v) for v in self.bbox), self.bbox_crs)
        if self.aoi is not None:
            return read_aoi(self.aoi, self.aoi_layer)
        return None

    @property
    def tile(self) -> int:
        """``tile_size`` rounded to a multiple of 32."""
        return round_tile_size(self.tile_size)

    def replace(self, **changes: Any) -> PredictOptions:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)


def auto_working_set(num_classes: int, budget: int = ACCUMULATOR_BYTES) -> int:
    """The largest super-tile side (<= 4096 px) whose ``(K + 2)`` accumulator planes fit ``budget``."""
    return max(MIN_TILE, min(MAX_SUPERTILE, int(math.sqrt(budget / (4 * (num_classes + 2))))))


# ---- memory model ----------------------------------------------------------------------------

#: Resident memory of a predict process before any tile and besides the weights: Python, torch,
#: GDAL, numpy (measured: 815 MiB with SegNeXt-T loaded and folded, of which 34 MB weights).
BASE_BYTES = 780 * 2**20
#: Peak memory of one fused fp32 SegNeXt forward on the CPU beyond its K logit planes, bytes per
#: input pixel (measured at 1024^2 with 16 classes: T 216, S 378, B 397, L 508).
ACTIVATION_BYTES_PER_PX = {"segnext_t": 220.0, "segnext_s": 380.0, "segnext_b": 400.0, "segnext_l": 510.0}
#: For other models (unknown): assume the largest SegNeXt.
DEFAULT_ACTIVATION_BYTES_PER_PX = 510.0
GDAL_CACHE_BYTES = 64 * 2**20
#: Finished cores queued for the writer thread at most.
WRITER_QUEUE = 2


@dataclass(frozen=True)
class MemoryPlan:
    """The tile, working set and estimated peak (bytes) chosen for a run; ``notes`` say what changed."""

    tile: int
    overlap: int
    working_set: int
    peak_bytes: int
    budget: int
    notes: tuple[str, ...] = ()


class Peak(NamedTuple):
    """Estimated peak memory in bytes: ``host`` (the process's RSS) and ``device`` (GPU memory; 0 on the CPU)."""

    host: int
    device: int


def estimate_peak(
    *,
    tile: int,
    overlap: int,
    batch: int,
    classes: int,
    bands: int,
    extent: tuple[int, int],
    probs_bands: int,
    tta_passes: int = 1,
    per_image: bool = True,
    workers: int = 2,
    activation_bytes_per_px: float = DEFAULT_ACTIVATION_BYTES_PER_PX,
    model_bytes: int = 0,
    on_gpu: bool = False,
    resampled: bool = False,
) -> Peak:
    """Estimated peak memory of a predict run; the README and ``--help`` state the same formula.

    ``peak = base + model + forward + accumulators + hand-on + finish + writer queue + reader + GDAL``:

    - base: the process before any tile (780 MiB) plus ``model_bytes`` (the weights and their
      folded copy);
    - forward: ``n * T^2 * (a + 4 K (1 + [TTA]))`` with ``n`` = 1 image per forward on the CPU
      (``batch`` when batched), ``a`` the variant's activation bytes per pixel;
    - accumulators: ``(4 (K + 1) + 1) * E_h * E_w`` (int32 sums and weight sum, bool validity);
    - hand-on: ``2 * 4 (K + 1) * overlap * (E_h + E_w)`` (strips kept and spilled);
    - finish: ``E_h * E_w * (4 + 1 + 8 + P)`` (the best sums, classes, an int64 index or a float64
      chunk, P probability bands);
    - writer queue: ``2 * E_h * E_w * (1 + P)`` (finished cores waiting to be written);
    - reader: ``(batch + 2 * workers + n) * C * T^2 * 4`` (normalised tiles read ahead);
    - GDAL: its 64 MiB block cache.

    With ``on_gpu`` the forward, accumulator, hand-on and finish terms are GPU memory (``device``)
    and the host keeps the rest plus two pinned upload batches.

    ``resampled`` (``--gsd`` resamples; every size above is then on the model grid): the writer
    queue holds finished cores as int32 sums, and the back-mapping its assembled copy, so
    ``(WRITER_QUEUE + 2) * 4 (K + 1) * E_h * E_w`` replace the queue term, plus the back-mapping's
    and each reader thread's bounded chunks (:data:`~.backmap.CHUNK_BYTES` twice,
    :data:`~.loader.READ_CHUNK_BYTES` per thread).
    """
    t2 = tile * tile
    n = 1 if per_image else batch
    eh, ew = extent
    area = eh * ew
    forward = n * t2 * (activation_bytes_per_px + 4 * classes * (1 + (tta_passes > 1)))
    quant = min(classes * t2, 1 << 22) * 8
    accumulators = (4 * (classes + 1) + 1) * area
    hand_on = 2 * 4 * (classes + 1) * overlap * (eh + ew)
    finish = area * (4 + 1 + 8 + probs_bands)
    queue = WRITER_QUEUE * area * (1 + probs_bands)
    if resampled:
        from .backmap import CHUNK_BYTES
        from .loader import READ_CHUNK_BYTES

        queue = (WRITER_QUEUE + 2) * 4 * (classes + 1) * area + 2 * CHUNK_BYTES + max(1, workers) * READ_CHUNK_BYTES
    reader = (batch + 2 * max(1, workers) + n) * bands * t2 * 4
    host = BASE_BYTES + model_bytes + queue + reader + GDAL_CACHE_BYTES
    device = forward + quant + accumulators + hand_on + finish
    if on_gpu:
        return Peak(int(host + 2 * batch * bands * t2 * 4 + hand_on / 2), int(device))
    return Peak(int(host + device), 0)


def plan_memory(
    options: PredictOptions,
    height: int,
    width: int,
    *,
    classes: int,
    bands: int,
    probs_bands: int,
    per_image: bool,
    variant: str | None = None,
    model_bytes: int = 0,
    gpu_bytes: int | None = None,
    resampled: bool = False,
) -> MemoryPlan:
    """Pick the working set (and, only if needed, a smaller tile) for ``options.max_memory``.

    ``gpu_bytes``: the GPU's memory when the model runs on one; then the host estimate is held to
    the budget and the device estimate to 85 % of the GPU. ``resampled``: ``--gsd`` resamples
    (``height``/``width`` are the model grid's; see :func:`estimate_peak`).

    The automatic working set starts at :func:`auto_working_set` (256 MiB of accumulators) and
    shrinks, one tile row at a time, until :func:`estimate_peak` fits the budget; if a single-tile
    super-tile still does not fit, the tile shrinks by a quarter at a time (not below 256 px, the
    overlap scaled with it).
    An explicit ``--working-set`` or a budget that nothing fits is kept, with a note.
    """
    act = ACTIVATION_BYTES_PER_PX.get(variant or "", DEFAULT_ACTIVATION_BYTES_PER_PX)
    passes = {"none": 1, "flip": 3, "d4": 8}[options.tta]
    notes: list[str] = []

    gpu_budget = int(0.85 * gpu_bytes) if gpu_bytes else None

    def peak(tile: int, overlap: int, ws: int) -> tuple[int, bool]:
        """(host peak, whether host and device both fit)."""
        grid = TileGrid(height, width, tile, overlap, ws)
        est = estimate_peak(
            tile=min(tile, max(grid.th, grid.tw)),
            overlap=overlap,
            batch=options.batch_size,
            classes=classes,
            bands=bands,
            extent=grid.max_extent,
            probs_bands=probs_bands,
            tta_passes=passes,
            per_image=per_image,
            workers=options.workers,
            activation_bytes_per_px=act,
            model_bytes=model_bytes,
            on_gpu=gpu_budget is not None,
            resampled=resampled,
        )
        fits = est.host <= budget and (gpu_budget is None or est.device <= gpu_budget)
        return est.host, fits

    tile, overlap = options.tile, options.overlap
    budget = options.max_memory
    if options.working_set is not None:
        p, fits = peak(tile, overlap, options.working_set)
        if not fits:
            notes.append(
                f"--working-set {options.working_set}: the estimated peak {p / 2**30:.1f} GiB exceeds "
                f"--max-memory {budget / 2**30:.1f} GiB"
            )
        return MemoryPlan(tile, overlap, options.working_set, p, budget, tuple(notes))
    while True:
        ws = max(tile, auto_working_set(classes))
        p, fits = peak(tile, overlap, ws)
        while not fits and ws > tile:
            ws = max(tile, ws - (tile - overlap))
            p, fits = peak(tile, overlap, ws)
        smaller = round_tile_size(tile * 3 // 4)
        if fits or smaller < MIN_PLAN_TILE:
            break
        tile, overlap = smaller, overlap * smaller // tile
    if tile != options.tile:
        notes.append(
            f"--tile-size: {options.tile} px tiles with {classes} classes need more than --max-memory "
            f"{budget / 2**30:.1f} GiB; using {tile} px tiles (overlap {overlap} px)"
        )
    if not fits:
        where = "the budget or the GPU" if gpu_budget else "the budget"
        notes.append(
            f"--max-memory: the estimated peak {p / 2**30:.1f} GiB exceeds {where} ({budget / 2**30:.1f} GiB) "
            "even with the smallest tile; raise --max-memory"
        )
    return MemoryPlan(tile, overlap, ws, p, budget, tuple(notes))
