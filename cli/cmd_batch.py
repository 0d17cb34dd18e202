"""``segnext-geo batch``: whole archives on Dask (a local cluster by default)."""

from __future__ import annotations

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
    WorkingSet,
    build_options,
)


@app.command()
def batch(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Scenes: files, directories, glob patterns or .txt lists; STAC Item or ItemCollection "
            ".json files (one scene per Item)."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Output folder (mirrors input paths).")],
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Model (loaded once per worker): a checkpoint file, a pretrained name (segnext-geo models list) "
            "or a URL. Default: $SEGNEXT_GEO_MODEL, else segnext_t_isaid.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Vector format: gpkg, parquet, fgb or geojson.")] = "gpkg",
    mask: Annotated[bool, typer.Option("--mask", help="Also keep each class raster (<name>.mask.tif).")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://host:8786.")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (default: cores / threads).")] = None,
    threads_per_worker: Annotated[int, typer.Option(help="Threads per worker (torch threads).")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="GPU resource per worker on multi-GPU machines.")] = 0,
    retries: Annotated[int, typer.Option(help="Retries of a scene whose worker died.")] = 2,
    merge: Annotated[Path | None, typer.Option(help="Also write all polygons into this one file.")] = None,
    merge_crs: Annotated[
        str | None, typer.Option(help="Reproject merged polygons to this CRS (else a layer per CRS).")
    ] = None,
    tile_size: TileSize = 1024,
    overlap: Overlap = 256,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    bands: Bands = None,
    nodata: Nodata = None,
    blend: BlendOpt = Blend.hann,
    tta: TTAOpt = TTA.none,
    working_set: WorkingSet = None,
    max_memory: MaxMemory = "3G",
    precision: PrecisionOpt = Precision.auto,
    compile: CompileOpt = Compile.auto,
    deterministic: Deterministic = False,
    normalization: NormalizationOpt = Normalization.auto,
    min_area: MinArea = None,
    fill_holes_below: FillHoles = None,
    simplify: Simplify = None,
    keep_background: KeepBackground = False,
    connectivity: Connectivity = None,
    asset: Asset = None,
    bbox: Bbox = None,
    bbox_crs: BboxCrs = "EPSG:4326",
    aoi: Aoi = None,
    aoi_layer: AoiLayer = None,
    gsd: GsdOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    split_above: Annotated[
        int,
        typer.Option(
            help="Cut scenes with more pixels than this into bands computed by every worker (same output); 0: never."
        ),
    ] = 8192 * 8192,
) -> None:
    """Predict polygons for every scene of an archive, resumably, on Dask.

    Without --scheduler a local cluster of worker processes starts; each worker loads the model once.
    DIR/manifest.jsonl records every scene; a rerun skips finished scenes whose input is unchanged and
    retries failed ones. One bad scene never stops the others; the exit code is 1 if any failed.

    Example: segnext-geo batch /data/archive/ --checkpoint best.ckpt --out-dir results/ --workers 2 --merge all.gpkg

    STAC and an area: segnext-geo batch items.json -o results/ --aoi harbour.gpkg  (scenes outside it: skipped)
    """
    from segnext_geo.batch import run_batch
    from segnext_geo.models.hub import prepare_checkpoint

    values = locals()
    options = build_options(
        {k: v for k, v in values.items() if k not in ("workers", "split_above")}
    )  # --workers: Dask processes
    checkpoint = prepare_checkpoint(checkpoint, progress=not quiet)
    s = run_batch(
        inputs,
        checkpoint,
        out_dir,
        fmt=fmt,
        mask=mask,
        scheduler=scheduler,
        workers=workers,
        threads_per_worker=threads_per_worker,
        gpus_per_worker=gpus_per_worker,
        retries=retries,
        merge=merge,
        merge_crs=merge_crs,
        options=options,
        progress=not quiet,
        split_above=None if split_above == 0 else split_above,
    )
    typer.echo(
        f"done {s.done}, skipped {s.skipped}, failed {s.failed} in {s.elapsed_s:.1f} s "
        f"({s.scenes_per_minute:.1f} scenes/min, {s.pixels / 1e6:.1f} MPix, {s.polygons} polygons)"
    )
    if s.outside:
        typer.echo(f"outside the area of interest (skipped, in the manifest): {s.outside}")
    typer.echo(f"manifest: {s.manifest}")
    for path, error in s.failures:
        typer.echo(f"failed: {path}: {error}", err=True)
    if s.merged:
        typer.echo(f"merged into {s.merged}: {s.merge_note}")
    if s.failed:
        raise typer.Exit(1)
