"""``segnext-geo models``: the catalogue of published weights, downloads and air-gapped imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .app import app

if TYPE_CHECKING:
    from segnext_geo.models.weights import Weights

models_app = typer.Typer(
    name="models",
    help="Published SegNeXt weights: list them, download them into the cache, or import a copied file.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 10e6 else f"{n / 1e6:.1f} MB"


def _checks(w: Weights) -> str:
    """What a download or import of ``w`` verifies, before there is a file."""
    done = [f"SHA-256 prefix {w.sha256_prefix}"] if w.sha256_prefix else []
    if w.sha1_trailer:
        done.append("Jittor SHA-1 trailer (when the file has one)")
    return ", ".join([*done, "every key and shape"])


@models_app.command("list")
def list_models(
    dataset: Annotated[
        str | None, typer.Option(help="Only this dataset: iSAID, ADE20K, Cityscapes, ImageNet-1k.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Every field of every entry as JSON.")] = False,
) -> None:
    """List the pretrained models: name, dataset, classes, reported mIoU, size, and whether it is cached.

    Any name works as --checkpoint (predict, batch, evaluate, info, export) and ImageNet backbones
    (mscan_*) as train --pretrained; a missing file is downloaded into the cache on first use.

    Example: segnext-geo models list --dataset iSAID
    """
    from segnext_geo.models.hub import cache_dir, cached_path, default_model
    from segnext_geo.models.weights import estimated_size, list_weights

    entries = list_weights(dataset)
    if as_json:
        rows = [{**w.to_dict(), "cached": cached_path(w).is_file(), "cache_path": str(cached_path(w))} for w in entries]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not entries:
        from segnext_geo.errors import UserError

        known = sorted({w.dataset for w in list_weights()})
        raise UserError(f"--dataset: no weights for {dataset!r}; datasets: {', '.join(known)}")
    default = default_model()
    header = f"{'name':<30} {'dataset':<12} {'classes':>7} {'mIoU':>6} {'size':>9}  {'format':<8} cached"
    typer.echo(header)
    typer.echo("-" * len(header))
    for w in entries:
        path = cached_path(w)
        size = _mb(path.stat().st_size) if path.is_file() else "~" + _mb(estimated_size(w))
        miou = f"{w.miou:g}" if w.miou is not None else "-"
        classes = str(w.num_classes) if w.num_classes else "-"
        mark = "yes" if path.is_file() else "no"
        name = w.name + (" *" if w.name == default else "")
        typer.echo(f"{name:<30} {w.dataset:<12} {classes:>7} {miou:>6} {size:>9}  {w.format:<8} {mark}")
    typer.echo(
        f"* default model of predict and batch ($SEGNEXT_GEO_MODEL overrides it). mIoU: single scale, as "
        f"published. ~size: estimated until cached. cache: {cache_dir()}"
    )


@models_app.command("info")
def model_info(name: Annotated[str, typer.Argument(help="A name from 'segnext-geo models list'.")]) -> None:
    """Everything the catalogue knows about one model: source, URL, classes, normalisation, licence.

    Example: segnext-geo models info segnext_t_isaid
    """
    from segnext_geo.errors import UserError
    from segnext_geo.models.hub import cached_path, download_url
    from segnext_geo.models.weights import find_weights, suggest_weights

    w = find_weights(name)
    if w is None:
        close = suggest_weights(name)
        hint = f"; did you mean {', '.join(close)}?" if close else "; 'segnext-geo models list' shows the names"
        raise UserError(f"{name}: no pretrained model of that name{hint}")
    path = cached_path(w)
    score = f"mIoU {w.miou} % ({w.reported})" if w.miou is not None else w.reported
    lines = [
        ("name", w.name),
        ("dataset", w.dataset),
        ("variant", f"{w.variant}, NMF rank {w.nmf_rank}" if w.nmf_rank else w.variant),
        ("classes", f"{w.num_classes}: {', '.join(w.class_names)}" if w.num_classes else "none (ImageNet backbone)"),
        ("reported", score),
        ("imagery", w.imagery),
        ("GSD", f"{w.gsd_m} m" if w.gsd_m else w.gsd_note),
        ("input", f"bands {list(w.bands)} ({', '.join(w.band_names)}), mean {list(w.mean)}, std {list(w.std)}"),
        ("training crop", f"{w.crop_size[0]}x{w.crop_size[1]}"),
        ("publisher", w.publisher),
        ("format", f"{w.format} ({w.family} key names)"),
        ("url", w.url),
        ("download from", download_url(w)),
        ("verified by", _checks(w)),
        ("cache", f"{path} ({'cached' if path.is_file() else 'not cached'})"),
        ("licence", w.licence),
    ]
    for key, value in lines:
        typer.echo(f"{key:<14}: {value}")


@models_app.command("download")
def download(
    names: Annotated[list[str], typer.Argument(help="Names from 'segnext-geo models list'.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download pretrained weights into the cache and verify them (hash where published, then every key and shape).

    A file is streamed into a temporary file, verified and only then renamed into the cache, so an
    interrupted or failed download never leaves a usable-looking file. Several processes asking at
    once download it once. $SEGNEXT_GEO_WEIGHTS_MIRROR=URL fetches <URL>/<file name> instead.

    Example: segnext-geo models download segnext_t_isaid mscan_t
    """
    from segnext_geo.errors import UserError
    from segnext_geo.models.hub import checks_done, fetch_weights, is_cached
    from segnext_geo.models.weights import find_weights, suggest_weights

    entries = []
    for name in names:
        w = find_weights(name)
        if w is None:
            close = suggest_weights(name)
            hint = f"; did you mean {', '.join(close)}?" if close else "; 'segnext-geo models list' shows the names"
            raise UserError(f"{name}: no pretrained model of that name{hint}")
        entries.append(w)
    for w in entries:
        if is_cached(w):
            from segnext_geo.models.hub import cached_path

            typer.echo(f"{w.name}: already cached at {cached_path(w)}")
            continue
        path = fetch_weights(w, progress=False if quiet else None)
        typer.echo(f"{w.name}: downloaded {path} ({_mb(path.stat().st_size)}; verified: {checks_done(w, path)})")


@models_app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="The catalogue name the file is, e.g. segnext_t_isaid.")],
    file: Annotated[Path, typer.Argument(help="The published file, copied here by hand (any file name).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a file already in the cache.")] = False,
) -> None:
    """Verify a file copied in by hand and put it into the cache: how an air-gapped machine gets weights.

    The file gets the same checks as a download (hash where published, Jittor's SHA-1 trailer,
    every key and shape) before it is copied into the cache under its published name; the source
    file is left as it is.

    Example: segnext-geo models import segnext_t_isaid /media/usb/segnext_tiny_896x896_isaid_160k.pkl
    """
    from segnext_geo.models.hub import checks_done, import_weights
    from segnext_geo.models.weights import get_weights

    path = import_weights(name, file, overwrite=overwrite)
    typer.echo(f"{name}: imported {file} as {path} (verified: {checks_done(get_weights(name), path)})")
