"""``segnext-geo predict``: a scene of any size -> a georeferenced class raster (or polygons)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .predict_options import (
    TTA,
    Aoi,
    AoiLayer,
    Asset,
    Bands,
    BatchSize,
    Bbox,
    BboxCrs,
    Blend,
    BlendOpt,
    Compile,
    CompileOpt,
    Connectivity,
    Deterministic,
    Device,
    FillHoles,
    GsdOpt,
    KeepBackground,
    MaxMemory,
    MinArea,
    Nodata,
    Normalization,
    NormalizationOpt,
    Overlap,
    Precision,
    PrecisionOpt,
    Simplify,
    TileSize,
    TTAOpt,
    Workers,
    WorkingSet,
    build_options,
)

CHECKPOINT_HELP = (
    "Model: a checkpoint file (any family, PyTorch or Jittor), a pretrained name (segnext-geo models list; "
    "downloaded once) or a URL. Default: $SEGNEXT_GEO_MODEL, else segnext_t_isaid."
)


class ProbsMode(StrEnum):
    classes = "classes"
    confidence = "confidence"


@app.command()
def predict(
    scene: Annotated[
        str,
        typer.Argument(
            help="Input raster GDAL opens (GeoTIFF, COG, VRT, JP2, /vsi... paths, or an http(s) URL of one), "
            "or a STAC Item (.json file or http(s) URL)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Class raster (.tif), or polygons (.gpkg, .parquet, .fgb, .geojson, .shp)."),
    ],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP)] = None,
    probs_out: Annotated[
        Path | None, typer.Option(help="Also write probabilities as uint8 round(p*255) to this .tif.")
    ] = None,
    probs_mode: Annotated[
        ProbsMode, typer.Option(help="classes: one band per class; confidence: one band, the top probability.")
    ] = ProbsMode.classes,
    mask_out: Annotated[
        Path | None, typer.Option(help="With a vector --out: also keep the class raster here (.tif).")
    ] = None,
    tile_size: TileSize = 1024,
    overlap: Overlap = 256,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    bands: Bands = None,
    nodata: Nodata = None,
    blend: BlendOpt = Blend.hann,
    tta: TTAOpt = TTA.none,
    workers: Workers = 2,
    working_set: WorkingSet = None,
    max_memory: MaxMemory = "3G",
    precision: PrecisionOpt = Precision.auto,
    compile: CompileOpt = Compile.auto,
    deterministic: Deterministic = False,
    normalization: NormalizationOpt = Normalization.auto,
    min_area: MinArea = None,
    fill_holes_below: FillHoles = None,
    simplify: Simplify = None,
    connectivity: Connectivity = None,
    keep_background: KeepBackground = False,
    asset: Asset = None,
    bbox: Bbox = None,
    bbox_crs: BboxCrs = "EPSG:4326",
    aoi: Aoi = None,
    aoi_layer: AoiLayer = None,
    gsd: GsdOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run the scene on this Dask cluster (tcp://host:8786), cut into horizontal bands."),
    ] = None,
    cluster: Annotated[
        int | None, typer.Option(help="Run the scene on a local Dask cluster of N worker processes.")
    ] = None,
    scratch_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --scheduler/--cluster: a folder all workers share for the bands (default: beside --out)."
        ),
    ] = None,
    band_count: Annotated[
        int | None, typer.Option(help="With --scheduler/--cluster: bands to cut the scene into (default: automatic).")
    ] = None,
    retries: Annotated[int, typer.Option(help="With --scheduler/--cluster: retries of a band whose task failed.")] = 2,
    gpus_per_worker: Annotated[
        float, typer.Option(help="With --scheduler/--cluster: GPU resource each band needs (workers with GPU=1).")
    ] = 0,
    threads_per_worker: Annotated[
        int | None,
        typer.Option(
            help="With --scheduler/--cluster: torch threads per band (default: this process's; the CPU output "
            "equals a single process with as many threads)."
        ),
    ] = None,
) -> None:
    """Segment a scene of any size tile by tile into a class raster that matches it pixel for pixel.

    Overlapping tiles are blended as softmax probabilities (Hann window) before the argmax: no seams.

    The scene is streamed in super-tiles, so memory does not grow with its width or height. Peak memory, in
    bytes, with tile T, batch B, K classes, super-tile side E (--working-set), P probability bands (0, 1 or K),
    W the checkpoint's weight bytes and a = 220-510 activation bytes per pixel (SegNeXt-T to -L): about
    0.8e9 + 2W + T²·(a + 4K) + E²·(4K + 20 + 3P) + 16(K + 1)·overlap·E + 12(B + 5)·T². The automatic working
    set (and, if needed, a smaller tile) keeps it under --max-memory.

    Output: a COG (uint8, nodata 255, colour table, class_names tag) with the scene's CRS and grid.

    Example: segnext-geo predict scene.tif --out polygons.gpkg  (the default model, segnext_t_isaid, is fetched once)

    Example: segnext-geo predict scene.tif -c segnext_t_isaid -o classes.tif --probs-out probs.tif --tta flip

    Polygons: segnext-geo predict scene.tif -c model.pth -o parcels.gpkg --mask-out classes.tif --min-area 20

    STAC and an area: segnext-geo predict https://host/item.json -o harbour.gpkg --bbox 9.10,45.00,9.12,45.02

    One scene on a cluster (same output as one process): segnext-geo predict big.vrt -o classes.tif --cluster 4
    """
    from segnext_geo.errors import UserError
    from segnext_geo.inference import PredictResult, predict_scene
    from segnext_geo.inference.distributed import DistributedOptions, predict_scene_distributed
    from segnext_geo.models.hub import prepare_checkpoint

    options = build_options(locals())
    dist = None
    distributed_flags = {
        "--scratch-dir": scratch_dir is not None,
        "--band-count": band_count is not None,
        "--retries": retries != 2,
        "--gpus-per-worker": gpus_per_worker != 0,
        "--threads-per-worker": threads_per_worker is not None,
    }
    if scheduler is not None or cluster is not None:
        dist = DistributedOptions(
            scheduler, cluster, scratch_dir, band_count, retries, gpus_per_worker, threads_per_worker
        )
    elif any(distributed_flags.values()):
        given = ", ".join(k for k, v in distributed_flags.items() if v)
        raise UserError(f"{given}: only used with --scheduler or --cluster (one scene on a Dask cluster)")
    checkpoint = prepare_checkpoint(checkpoint, progress=not quiet)
    r: PredictResult
    try:
        if dist is not None:
            r = predict_scene_distributed(
                scene,
                checkpoint,
                out,
                options,
                dist,
                probs_out=probs_out,
                mask_out=mask_out,
                overwrite=overwrite,
                progress=not quiet,
            )
        else:
            r = predict_scene(
                scene,
                checkpoint,
                out,
                options,
                probs_out=probs_out,
                mask_out=mask_out,
                overwrite=overwrite,
                progress=not quiet,
            )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: outputs were cleaned up; typer would report success
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    if "resampling" in r.gsd:  # say how the scene was resampled (a native run says nothing)
        typer.echo(r.gsd, err=True)
    extra = f", {r.polygons} polygons" if r.polygons is not None else ""
    typer.echo(
        f"wrote {r.out} ({r.pixels:,} valid px, {r.tiles} tiles, {r.skipped_tiles} skipped{extra}) "
        f"in {r.elapsed_s:.1f} s"
    )
    for extra_path in (r.mask_path, r.probs_path):
        if extra_path is not None:
            typer.echo(f"wrote {extra_path}")
