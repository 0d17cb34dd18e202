"""``segnext-geo preview``: a picture of a result, readable at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app


@app.command()
def preview(
    scene: Annotated[Path, typer.Argument(help="The raster that was segmented.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")],
    polygons: Annotated[Path | None, typer.Option(help="Polygons (with a class_id column) to draw.")] = None,
    mask: Annotated[Path | None, typer.Option(help="A class raster to draw (when no polygons).")] = None,
    truth: Annotated[Path | None, typer.Option(help="A ground-truth class raster for a second panel.")] = None,
    bands: Annotated[str | None, typer.Option(help="1-based bands shown as RGB, e.g. 4,3,2.")] = None,
    max_size: Annotated[int, typer.Option(help="Longest side of each panel in pixels.")] = 1600,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing PNG.")] = False,
) -> None:
    """Draw a scene with its polygons (or class raster) in class colours, downsampled for huge scenes.

    Example: segnext-geo preview scene.tif --polygons polygons.gpkg --out preview.png
    """
    from segnext_geo.preview import render_preview
    from segnext_geo.raster.source import parse_bands

    path = render_preview(
        scene,
        out,
        polygons=polygons,
        mask=mask,
        truth=truth,
        bands=parse_bands(bands),
        max_size=max_size,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {path}")
