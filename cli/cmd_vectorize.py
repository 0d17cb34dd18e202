"""``segnext-geo vectorize``: a class raster to polygons, block by block, seam-free."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .predict_options import SIMPLIFY_HELP


def _split(values: list[str] | None) -> list[str] | None:
    """``["1,2", "5"]`` -> ``["1", "2", "5"]`` (options may be repeated or comma-separated)."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def vectorize(
    mask: Annotated[str, typer.Argument(help="Integer class raster (e.g. predict's mask, nodata 255), /vsi... too.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output: .gpkg (recommended), .parquet, .fgb, .geojson, .shp.")
    ],
    probs: Annotated[
        str | None,
        typer.Option(
            help="Probabilities on the mask's grid (1-band confidence or 1 band per class): adds mean_confidence."
        ),
    ] = None,
    classes: Annotated[
        list[str] | None, typer.Option(help="Only these class ids, e.g. --classes 1,3 (overrides --keep-background).")
    ] = None,
    class_names: Annotated[
        list[str] | None,
        typer.Option(help="Names of classes 0..K-1, e.g. background,building (default: the mask's class_names tag)."),
    ] = None,
    keep_background: Annotated[bool, typer.Option("--keep-background", help="Also write class 0.")] = False,
    min_area: Annotated[float | None, typer.Option(help="Drop polygons smaller than this many m2.")] = None,
    fill_holes_below: Annotated[
        float | None, typer.Option(help="Fill holes smaller than this many m2 (what lies in them is dropped).")
    ] = None,
    simplify: Annotated[
        str | None,
        typer.Option(help=SIMPLIFY_HELP),
    ] = None,
    connectivity: Annotated[int, typer.Option(help="4: pixels sharing an edge; 8: also a corner.")] = 4,
    block_size: Annotated[int, typer.Option(help="Block side in pixels (memory grows with its square).")] = 2048,
    workers: Annotated[int, typer.Option(help="Processes polygonizing blocks in parallel.")] = 1,
    source: Annotated[str | None, typer.Option(help="Value of the source column (default: the mask path).")] = None,
    layer: Annotated[str | None, typer.Option(help="Layer name (default: the output file's stem).")] = None,
    to_wgs84: Annotated[bool, typer.Option("--to-wgs84", help="Write EPSG:4326 lon/lat (e.g. for GeoJSON).")] = False,
    nodata: Annotated[
        float | None,
        typer.Option(help="Treat this value as nodata, replacing the raster's own (masks still apply)."),
    ] = None,
    force_classes: Annotated[
        bool,
        typer.Option(
            "--force-classes",
            help="Vectorize a raster that does not look like classes (float, or > 1,000 values and no class names).",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Polygonize a class raster into georeferenced polygons, block by block, without seams.

    Polygons cut by block edges are merged exactly: the result equals whole-array rasterio.features.shapes.
    Memory is bounded by the block size, not the scene.
    Columns: class_id, class_name, area_m2, perimeter_m, source, and mean_confidence with --probs.
    Order: merge, then --min-area, then --fill-holes-below, then --simplify (neighbours keep shared edges).

    Example: segnext-geo vectorize scene.mask.tif --out scene.gpkg --probs scene.probs.tif --min-area 20 --workers 4
    """
    from segnext_geo.errors import UserError
    from segnext_geo.vector import VectorOptions, vectorize_raster

    class_ids = _split(classes)
    try:
        ids = tuple(int(c) for c in class_ids) if class_ids is not None else None
    except ValueError:
        raise UserError(f"--classes: {','.join(class_ids or [])!r} is not a list of class ids like 1,3") from None
    options = VectorOptions(
        classes=ids,
        keep_background=keep_background,
        min_area=min_area,
        fill_holes_below=fill_holes_below,
        simplify=simplify,
        connectivity=connectivity,
        block_size=block_size,
        workers=workers,
        to_wgs84=to_wgs84,
        nodata=nodata,
        force_classes=force_classes,
    )
    try:
        r = vectorize_raster(
            mask,
            out,
            options,
            probs=probs,
            class_names=_split(class_names),
            overwrite=overwrite,
            source=source,
            layer=layer,
            progress=not quiet,
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the output was cleaned up; typer would exit silently
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    per_class = ", ".join(f"{k} {v}" for k, v in r.per_class.items())
    typer.echo(
        f"wrote {r.count} polygons to {r.path} (layer {r.layer}, {r.crs or 'no CRS'}) in {r.elapsed_s:.1f} s"
        + (f": {per_class}" if per_class else "")
    )
