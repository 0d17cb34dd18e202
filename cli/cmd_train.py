"""``segnext-geo prepare-isaid``, ``train`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app

_SET_HELP = "Override one config key, e.g. --set data.batch_size=8 (repeatable; the value is YAML)."


@app.command("prepare-isaid")
def prepare_isaid(
    raw_dir: Annotated[Path, typer.Argument(help="Raw iSAID: train/, val/, test/ with images/ and Semantic_masks/.")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder for img_dir/ and ann_dir/ patches.")],
    protocol: Annotated[
        str, typer.Option(help="mmseg: 896 px patches, overlap 384, padded; jseg: 800/200 as the authors' JSeg.")
    ] = "mmseg",
    patch_size: Annotated[int | None, typer.Option(help="Patch side in px (default: the protocol's).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Patch overlap in px (default: the protocol's).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Cut raw iSAID scenes into the patches the SegNeXt paper trains and evaluates on.

    Reads the extracted PNGs or the original zip archives (train/images/part1.zip ...,
    train/Semantic_masks/images.zip), maps mask colours to the 16 class ids (unknown
    colours become 0 and are reported) and writes mmseg-style
    img_dir/{train,val}/P0000_{y0}_{y1}_{x0}_{x1}.png patches with 8-bit palette
    annotations in ann_dir/. --protocol mmseg (default) cuts 896x896 patches with overlap
    384 as mmsegmentation's converter (small images padded, test images copied whole);
    --protocol jseg cuts 800x800 with overlap 200 as the authors' JSeg (an image is cut only
    when both sides exceed 800, else copied whole; P1527 and P1530 left out), the patches
    behind the published iSAID weights. Running it again skips images that are already done.

    Example: segnext-geo prepare-isaid ~/datasets/iSAID_raw data/iSAID --workers 4

    Example: segnext-geo prepare-isaid ~/datasets/iSAID_raw data/iSAID_jseg --protocol jseg
    """
    from segnext_geo.data.isaid_prepare import prepare_isaid as run

    report = run(
        raw_dir, out_dir, patch_size=patch_size, overlap=overlap, workers=workers, progress=not quiet, protocol=protocol
    )
    for line in report.summary():
        typer.echo(line)


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/segnext_t_isaid.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP)] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="ImageNet MSCAN weights by name (mscan_t; downloaded once) or file, or a segmentation "
            "checkpoint (file, pretrained name or URL)."
        ),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue a run exactly from its checkpoint (e.g. runs/x/last.ckpt).")
    ] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node: a number or 'auto' (DDP when > 1).")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (multi-node DDP, via torchrun or SLURM).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in trainer.out_dir.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train SegNeXt with the paper's recipe on iSAID, a torchgeo dataset or your own GeoTIFFs.

    Writes best.ckpt (highest val mIoU), last.ckpt, config.yaml, training_curve.png and
    logs/ (CSV) into trainer.out_dir. Checkpoints carry classes, palette, normalisation
    and bands, so 'segnext-geo predict --checkpoint best.ckpt' needs no other flags.
    Several devices train with DDP; --resume restores optimiser, schedule, step, data
    position and RNG state.

    Example: segnext-geo train --config configs/segnext_t_isaid.yaml --pretrained mscan_t --devices 4

    Example: segnext-geo train -c configs/cpu_smoke.yaml --set schedule.iters=50 --set trainer.out_dir=runs/smoke
    """
    from segnext_geo.train.fit import train_from_config

    result = train_from_config(
        config,
        set_,
        resume=resume,
        pretrained=pretrained,
        devices=devices,
        num_nodes=num_nodes,
        overwrite=overwrite,
        progress=False if quiet else None,
    )
    best = f"{100 * result.best_miou:.2f}" if result.best_miou is not None else "n/a"
    typer.echo(f"steps      : {result.steps}")
    typer.echo(f"best mIoU  : {best}")
    typer.echo(f"best       : {result.best}")
    typer.echo(f"last       : {result.last}")
    typer.echo(f"curve      : {result.out_dir / 'training_curve.png'}")


@app.command()
def evaluate(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config naming the dataset.")],
    checkpoint: Annotated[
        str,
        typer.Option("--checkpoint", help="A checkpoint written by train (best.ckpt), a pretrained name or a URL."),
    ],
    mode: Annotated[str | None, typer.Option(help="whole or slide (default: eval.mode of the config).")] = None,
    split: Annotated[str | None, typer.Option(help="Split to score (default: data.val_split).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Metrics JSON (default: eval_<split>_<mode>.json next to the checkpoint).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing JSON/PNG outputs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score a checkpoint like the paper: mIoU, per-class IoU and accuracy, aAcc and the confusion matrix.

    'whole' runs each image at once; 'slide' averages eval.crop_size windows every eval.stride
    pixels. Prints a table, writes the JSON report and a per-class bar chart PNG beside it.

    Example: segnext-geo evaluate -c configs/segnext_t_isaid.yaml --checkpoint runs/t_isaid/best.ckpt --mode slide
    """
    from segnext_geo.train.evaluate import evaluate as run
    from segnext_geo.train.evaluate import format_table

    result = run(
        config,
        checkpoint,
        mode=mode,
        split=split,
        out=out,
        overwrite=overwrite,
        device=device,
        overrides=set_,
        progress=not quiet,
    )
    typer.echo(format_table(result))
    typer.echo(f"{result['images']} images, mode {result['mode']}; wrote {result['json']} and {result['png']}")
