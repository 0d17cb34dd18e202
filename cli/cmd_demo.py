"""``segnext-geo demo``: see the whole tool work in minutes, with no download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for every demo output.")] = Path("demo"),
    size: Annotated[int, typer.Option(help="Side of the demo scene in pixels (0.5 m each).")] = 4096,
    minutes: Annotated[float, typer.Option(help="Training budget in minutes.")] = 3.0,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: as many as fit in --minutes, at least 20).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and the training.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier demo in --out-dir.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final summary.")] = False,
) -> None:
    """Synthesise a harbour scene, train SegNeXt-T briefly, predict it, vectorise, score and draw it.

    Writes DIR/scene.tif (a 4096^2 UTM scene with nodata corners), truth.tif, classes.tif,
    polygons.gpkg, preview.png, scores.json and the training run (run/best.ckpt, curves).

    Example: segnext-geo demo --out-dir demo --size 4096 --minutes 3
    """
    from segnext_geo.demo import run_demo

    r = run_demo(
        out_dir, size=size, minutes=minutes, device=device, seed=seed, overwrite=overwrite, quiet=quiet, steps=steps
    )
    typer.echo(f"\nIoU per class on the {size}^2 px demo scene (trained {r.train_steps} steps):")
    for name, value in r.iou.items():
        typer.echo(f"  {name:<12} {value:6.3f}")
    typer.echo(f"  {'mIoU':<12} {r.miou:6.3f}")
    typer.echo(f"polygons   : {r.polygons} ({r.polygon_count} features)")
    typer.echo(f"class map  : {r.classes}")
    typer.echo(f"picture    : {r.preview}")
    typer.echo(f"checkpoint : {r.checkpoint}")
    typer.echo("timings    : " + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()))
