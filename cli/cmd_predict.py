"""``segnext-geo predict``: a scene of any size -> a georeferenced class raster (or polygons)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .app import app

CHECKPOINT_HELP = (
    "Model: a checkpoint file (any family, PyTorch or Jittor), a pretrained name (segnext-geo models list; "
    "downloaded once) or a URL. Default: $SEGNEXT_GEO_MODEL, else segnext_t_isaid."
)


class Blend(StrEnum):
    hann = "hann"
    taper = "taper"
    none = "none"


class TTA(StrEnum):
    none = "none"
    flip = "flip"
    d4 = "d4"


class ProbsMode(StrEnum):
    classes = "classes"
    confidence = "confidence"


class Normalization(StrEnum):
    auto = "auto"
    meanstd = "meanstd"
    percentile = "percentile"


@app.command()
def predict(
    scene: Annotated[Path, typer.Argument(help="Input raster GDAL opens: GeoTIFF, COG, VRT, JP2 ...")],
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
    tile_size: Annotated[int, typer.Option(help="Tile side in px (rounded to a multiple of 32, >= 64).")] = 1024,
    overlap: Annotated[int, typer.Option(help="Px shared by neighbouring tiles (<= half a tile).")] = 256,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass (does not change the output).")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bands: Annotated[
        str | None, typer.Option(help="1-based bands in model order, e.g. 3,2,1 (default: the checkpoint's).")
    ] = None,
    blend: Annotated[
        Blend, typer.Option(help="hann (cosine taper for small overlaps), taper, or none (centre crop).")
    ] = Blend.hann,
    tta: Annotated[TTA, typer.Option(help="Test-time augmentation: none, flip (3 passes) or d4 (8).")] = TTA.none,
    workers: Annotated[int, typer.Option(help="Threads reading tiles while the model runs (0: none).")] = 2,
    working_set: Annotated[
        int | None,
        typer.Option(help="Largest super-tile side in px; bounds memory (default: <= 4096, 256 MiB of accumulators)."),
    ] = None,
    normalization: Annotated[
        Normalization, typer.Option(help="auto: checkpoint mean/std for uint8, scene-wide 2-98% stretch otherwise.")
    ] = Normalization.auto,
    mask_out: Annotated[
        Path | None, typer.Option(help="With a vector --out: also keep the class raster here (.tif).")
    ] = None,
    min_area: Annotated[
        float | None, typer.Option(help="Vector output: drop polygons smaller than this (m^2).")
    ] = None,
    simplify: Annotated[float | None, typer.Option(help="Vector output: simplification tolerance (CRS units).")] = None,
    connectivity: Annotated[int | None, typer.Option(help="Vector output: pixel connectivity, 4 or 8.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Segment a scene of any size tile by tile into a class raster that matches it pixel for pixel.

    Overlapping tiles are blended as softmax probabilities (Hann window) before the argmax: no seams.

    The scene is streamed in super-tiles, so memory does not grow with its width or height.

    Output: a COG (uint8, nodata 255, colour table, class_names tag) with the scene's CRS and grid.

    Example: segnext-geo predict scene.tif --out polygons.gpkg  (the default model, segnext_t_isaid, is fetched once)

    Example: segnext-geo predict scene.tif -c segnext_t_isaid -o classes.tif --probs-out probs.tif --tta flip

    Polygons: segnext-geo predict scene.tif -c model.pth -o parcels.gpkg --mask-out classes.tif --min-area 20
    """
    from segnext_geo.inference import predict_scene
    from segnext_geo.models.hub import prepare_checkpoint
    from segnext_geo.vector import VectorOptions

    checkpoint = prepare_checkpoint(checkpoint, progress=not quiet)
    given = (min_area, simplify, connectivity)
    vector = None
    if any(v is not None for v in given):
        conn = connectivity if connectivity is not None else 4
        vector = VectorOptions(min_area=min_area, simplify=simplify, connectivity=conn)
    try:
        r = predict_scene(
            scene,
            checkpoint,
            out,
            probs_out=probs_out,
            probs_mode=probs_mode.value,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            bands=bands,
            blend=blend.value,
            tta=tta.value,
            workers=workers,
            overwrite=overwrite,
            progress=not quiet,
            working_set=working_set,
            mask_out=mask_out,
            vector=vector,
            normalization=normalization.value,
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: outputs were cleaned up; typer would report success
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    extra = f", {r.polygons} polygons" if r.polygons is not None else ""
    typer.echo(
        f"wrote {r.out} ({r.pixels:,} valid px, {r.tiles} tiles, {r.skipped_tiles} skipped{extra}) "
        f"in {r.elapsed_s:.1f} s"
    )
    for extra_path in (r.mask_path, r.probs_path):
        if extra_path is not None:
            typer.echo(f"wrote {extra_path}")
