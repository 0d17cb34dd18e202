"""``vectorize_raster``: a class raster to georeferenced polygons, block by block, seam-free.

Pipeline (see the modules for each step):

1. :mod:`.options` validates the options (:class:`.options.VectorOptions`),
   :func:`segnext_geo.outputs.check_outputs` the output (never an input), :mod:`.source` the
   mask (a class raster; validity from GDAL's masks) and the probabilities;
2. :mod:`.polygonize` polygonizes each block with ``rasterio.features.shapes`` (in worker
   processes with ``workers > 1``); complete polygons are post-processed there;
3. :mod:`.seams` merges polygons cut by seams, exactly, as the blocks arrive in order;
4. :mod:`.postprocess` applies minimum area -> hole filling -> coverage simplification and
   puts every geometry in canonical form (:mod:`.canonical`);
5. :mod:`.writers` appends features to a scratch GeoPackage, copies them into the output in
   first-pixel order, and the output is renamed into place.

The polygons equal those of ``rasterio.features.shapes`` on the whole array (same count per
class, same point sets), are valid, never overlap, and cover exactly the selected pixels
(before simplification). The output file does not depend on ``block_size`` or ``workers``.
Memory follows ``block_size`` and the polygons still open at the current block row, not the
scene, except that ``fill_holes_below`` holds the polygons with a part smaller than its
threshold (and the owners of leaky holes) and ``simplify`` holds every polygon until the end
(the coverage has to be simplified as a whole).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..outputs import atomic_output, check_outputs, local_file, sigterm_as_interrupt
from .attributes import GeomArray, Meter
from .options import VectorOptions
from .parts import Parts
from .polygonize import BlockGrid, PolygonizeJob
from .postprocess import Finished, Finisher
from .seams import SeamStitcher
from .source import MAX_CLASSES, class_name_lookup, not_classes, open_mask, open_probs
from .workers import Runner
from .writers import FeatureWriter, output_driver

__all__ = ["VectorizeResult", "vectorize_raster"]

log = logging.getLogger(__name__)


@dataclass
class VectorizeResult:
    """What :func:`vectorize_raster` wrote.

    Attributes:
        path: the output file.
        count: features written.
        crs: the output CRS (``EPSG:xxxx`` or WKT), ``None`` when the mask has none.
        elapsed_s: wall time in seconds.
        warnings: one-line notes for the user (missing CRS, empty output, renamed fields...).
        layer: the layer name.
        driver: the OGR driver used.
        per_class: features written per class name.
        blocks: blocks processed.
        dropped_small: polygons removed by ``min_area``.
        absorbed: polygons removed because they lay in a filled hole.
        max_open: the most seam-cut polygons held at once (the merge's working set).
    """

    path: Path
    count: int
    crs: str | None
    elapsed_s: float
    warnings: list[str] = field(default_factory=list)
    layer: str = ""
    driver: str = ""
    per_class: dict[str, int] = field(default_factory=dict)
    blocks: int = 0
    dropped_small: int = 0
    absorbed: int = 0
    max_open: int = 0


def vectorize_raster(
    mask: str | Path,
    out: str | Path,
    options: VectorOptions | None = None,
    *,
    probs: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    source: str | None = None,
    layer: str | None = None,
    progress: bool = True,
) -> VectorizeResult:
    """Polygonize a class raster block by block into a vector file, seam-free.

    Args:
        mask: single-band integer class GeoTIFF (uint8 with nodata 255, as ``predict`` writes).
        out: ``.gpkg`` (recommended), ``.parquet`` (GeoParquet, needs pyarrow), ``.fgb``,
            ``.geojson`` or ``.shp``; written atomically.
        options: what to polygonize and how (classes, min area, holes, simplification,
            connectivity, block size, workers, CRS, nodata); default ``VectorOptions()``.
        probs: 1-band confidence or K-band per-class probabilities on the mask's grid (uint8
            0-255 or float 0-1); adds ``mean_confidence`` (mean over the polygon's pixels).
        class_names: names of classes ``0..K-1``; default: the mask's ``class_names`` tag (JSON
            list), else ``class_<id>``.
        overwrite: replace an existing ``out``.
        source: the ``source`` column, and the name warnings give the raster (default: the mask
            path); ``predict`` passes the user's scene, not its temporary class raster.
        layer: layer name (default: ``out``'s stem).
        progress: show a tqdm bar over blocks (on stderr).

    Returns:
        A :class:`VectorizeResult`; ``warnings`` holds notes such as a missing CRS.

    Raises:
        UserError: bad input or options (one line naming the file or option).
    """
    opts = options if options is not None else VectorOptions()
    if not isinstance(opts, VectorOptions):
        raise TypeError(f"vectorize_raster: options must be a VectorOptions, got {type(opts).__name__}")
    t0 = time.perf_counter()
    out_path = Path(out)
    check_outputs([mask] + ([probs] if probs is not None else []), [("--out", out_path)], overwrite)
    driver = output_driver(out_path)
    shown = str(mask) if source is None else source
    m = open_mask(
        mask, nodata=opts.nodata, force_classes=opts.force_classes, named=class_names is not None, shown=shown
    )
    notes: list[str] = list(m.notes)
    names = list(class_names) if class_names is not None else (list(m.tag_class_names or []) or None)
    p = open_probs(probs, m, names) if probs is not None else None
    if m.crs_wkt is None:
        notes.append(
            f"{shown}: no CRS; coordinates, area_m2 and perimeter_m are in the raster's own units "
            "(pixels for an identity transform), not metres"
        )
    meter = Meter(m.transform, m.crs_wkt, center_px=(m.width / 2, m.height / 2), to_wgs84=opts.to_wgs84)
    notes.extend(f"{shown}: {n}" for n in meter.notes)
    tol = opts.tolerance
    simplify_px = None if tol is None else (tol[0] if tol[1] == "px" else tol[0] / meter.pixel_size_m())
    with_conf = p is not None
    finisher = Finisher(
        meter,
        min_area_m2=opts.min_area_m2,
        fill_holes_m2=opts.fill_holes_m2,
        simplify_px=simplify_px,
        multi=opts.connectivity == 8,
        with_conf=with_conf,
        conf_quantum=p.quantum if p is not None else 1.0,
    )
    grid = BlockGrid(m.height, m.width, opts.block_size)
    job = PolygonizeJob(
        mask=m,
        probs=p,
        grid=grid,
        classes=opts.classes,
        keep_background=opts.keep_background,
        connectivity=opts.connectivity,
        finisher=finisher,
        count_classes=names is None and not opts.force_classes,
    )
    layer_name = layer or out_path.stem
    units = (
        "area_m2 and perimeter_m in metres"
        if meter.kind != "none"
        else "raster units (no CRS; pixels for an identity transform): coordinates, area_m2, perimeter_m"
    )
    with sigterm_as_interrupt(), atomic_output(out_path, overwrite) as tmp:
        writer = FeatureWriter(
            tmp,
            driver=driver,
            layer=layer_name,
            crs_wkt=meter.output_crs_wkt,
            geometry_type="MultiPolygon" if opts.connectivity == 8 else "Polygon",
            class_names=class_name_lookup(names),
            source=str(mask) if source is None else source,
            with_confidence=with_conf,
            layer_metadata={"source": shown, "connectivity": str(opts.connectivity), "measures": units},
            timestamp=_content_date(m.path),
        )
        try:
            stats = _run(job, opts.workers, finisher, writer, progress, notes)
            writer.finish()
            writer.move_companions(out_path)
        finally:
            writer.cleanup()
    for old, new in writer.renamed.items():
        notes.append(f"{out_path}: Shapefile field names are limited to 10 characters; {old} is written as {new}")
    if writer.count == 0:
        notes.append(
            f"{out_path}: no polygons (the mask has no pixels of the selected classes"
            f"{' above --min-area' if opts.min_area_m2 else ''}); wrote an empty layer"
        )
    for n in notes:
        log.warning(n)
    lookup = class_name_lookup(names)
    return VectorizeResult(
        path=out_path,
        count=writer.count,
        crs=None if meter.kind == "none" else ("EPSG:4326" if opts.to_wgs84 else m.crs_name),
        elapsed_s=time.perf_counter() - t0,
        warnings=notes,
        layer=layer_name,
        driver=driver,
        per_class={lookup.get(c, f"class_{c}"): n for c, n in sorted(writer.per_class.items())},
        blocks=len(grid),
        dropped_small=stats["dropped"],
        absorbed=stats["absorbed"],
        max_open=stats["max_open"],
    )


def _content_date(path: str) -> datetime | None:
    """The date the output records: ``SOURCE_DATE_EPOCH`` if set, else the mask's modification
    time (so the same mask gives the same bytes), else ``None`` (now)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        if epoch:
            return datetime.fromtimestamp(int(epoch), UTC)
        local = local_file(path)
        return datetime.fromtimestamp(int(local.stat().st_mtime), UTC) if local is not None else None
    except (OSError, ValueError, OverflowError):
        return None


def _run(
    job: PolygonizeJob, workers: int, finisher: Finisher, writer: FeatureWriter, progress: bool, notes: list[str]
) -> dict[str, int]:
    """Polygonize, merge and write every block; then the deferred polygons.

    Finished polygons are written in a fixed order (block by block, each block's complete
    polygons before the seam groups it closed) whatever the number of workers, so the output
    is identical for any ``workers``.
    """
    stitcher = SeamStitcher(job.grid, job.connectivity, finisher.with_conf)
    deferred: list[Parts] = []
    holes: list[GeomArray] = []
    queue: deque[Finished | Future[Finished]] = deque()
    dropped = max_open = n_deferred = 0
    seen: set[int] = set()

    def drain(wait: bool) -> None:
        nonlocal dropped, n_deferred
        while queue and (wait or isinstance(queue[0], Finished) or queue[0].done()):
            item = queue.popleft()
            fin = item if isinstance(item, Finished) else item.result()
            writer.write(fin.features)
            deferred.append(fin.deferred)
            holes.append(fin.holes)
            dropped += fin.dropped
            n_deferred += len(fin.deferred)

    with (
        Runner(job, workers) as runner,
        tqdm(total=len(job.grid), desc="vectorize", unit="block", disable=not progress, leave=False) as bar,
    ):
        if runner.note:
            notes.append(runner.note)
        for res in runner.blocks():
            if job.count_classes and res.class_ids is not None:
                seen.update(res.class_ids.tolist())
                if len(seen) > MAX_CLASSES:  # the sample in open_mask missed it
                    raise not_classes(job.mask.path)
            queue.append(res.finished)
            closed = stitcher.add(res)
            max_open = max(max_open, stitcher.n_open + sum(len(g.geoms) for g in closed))
            if closed:
                queue.append(runner.finish(closed))
            drain(wait=len(queue) > 4 * runner.workers)
            bar.update(1)
            bar.set_postfix(polygons=writer.count + n_deferred, open=stitcher.n_open, refresh=False)
        leftover = stitcher.finish()
        if leftover:
            queue.append(runner.finish(leftover))
        drain(wait=True)
    all_holes = np.concatenate(holes) if holes else np.empty(0, dtype=object)
    features, absorbed = finisher.finish_deferred(Parts.concat(deferred, finisher.with_conf), all_holes)
    writer.write(features)
    return {"dropped": dropped, "absorbed": absorbed, "max_open": max_open}
