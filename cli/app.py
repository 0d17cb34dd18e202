"""The ``segnext-geo`` Typer app. Each command parses options and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from segnext_geo.errors import UserError

app = typer.Typer(
    name="segnext-geo",
    help="SegNeXt segmentation of huge GeoTIFF scenes into georeferenced rasters and polygons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _flags_without_types() -> None:
    """Boolean flags take no value: show no ``<bool>`` type for them in ``--help`` (``--help`` included)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_types()


class _WarningHandler(logging.Handler):
    """Library warnings as ``warning: ...`` lines on the *current* ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"warning: {record.getMessage()}\n")
        except (OSError, ValueError):
            pass


def _setup_logging() -> None:
    """Route ``segnext_geo`` log warnings to stderr once per process (idempotent)."""
    logger = logging.getLogger("segnext_geo")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        handler = _WarningHandler(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        # GDAL messages reach Python logging through rasterio; errors also raise and are reported
        # once as "error: ...", so keep logging's last-resort handler from printing them raw.
        logging.getLogger("rasterio").addHandler(logging.NullHandler())


def _print_version(value: bool) -> None:
    """``--version``: print the package version and stop (before any command runs)."""
    if value:
        from segnext_geo import __version__

        typer.echo(f"segnext-geo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """SegNeXt segmentation of huge GeoTIFF scenes into georeferenced rasters and polygons."""
    _setup_logging()


@app.command()
def info(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="A checkpoint file (official, mmseg 1.x, Jittor, ImageNet MSCAN or own), a pretrained name "
            "(segnext-geo models list) or a URL."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Print a checkpoint's family, variant, classes and parameter count.

    Example: segnext-geo info segnext_mscan-t_ade20k.pth

    Example: segnext-geo info segnext_t_isaid
    """
    from segnext_geo.models import describe_checkpoint

    d = describe_checkpoint(checkpoint)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"checkpoint : {d['path']}")
    typer.echo(f"family     : {d['family']} ({d['format']} file)")
    typer.echo(f"variant    : {d['variant']}")
    if d["num_classes"] is None:
        typer.echo("classes    : none (ImageNet backbone; the decoder is initialised when training)")
    else:
        names = ", ".join(d["class_names"][:8]) + (", ..." if d["num_classes"] > 8 else "")
        typer.echo(f"classes    : {d['num_classes']} ({names})")
    typer.echo(f"parameters : {d['parameters']:,} (backbone {d['backbone_parameters']:,})")
    typer.echo(f"NMF rank   : {d['nmf_rank']}")
    if d["head_conv_bias"]:
        typer.echo("head       : biases on the squeeze, ham_out and align convs (JSeg code of Sept 2022)")
    typer.echo(f"bands      : {d['bands']}, mean {d['mean']}, std {d['std']}")
    gsd = f"{d['gsd_m']:.4g} m" if d["gsd_m"] is not None else "unknown or varies"
    typer.echo(f"GSD        : {gsd}" + (f" ({d['gsd_note']})" if d["gsd_note"] else ""))
    w = d["weights"]
    if w:
        score = f"mIoU {w['miou']} ({w['reported']})" if w["miou"] is not None else w["reported"]
        typer.echo(f"weights    : {w['name']}: {w['dataset']}, {score}")
        typer.echo(f"licence    : {w['licence']}")


def _register_commands() -> None:
    """Import every ``cmd_*`` module of this package; each adds its commands to ``app``."""
    import importlib
    import pkgutil

    for mod in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{__package__}.{mod.name}")


_register_commands()


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        rc = app(standalone_mode=False)  # returns the code of a typer.Exit raised by a command
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        # click usage errors (typer may vendor its own click, so match by shape)
        code = getattr(e, "exit_code", None)
        if hasattr(e, "format_message") and isinstance(code, int):
            typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(code)
        raise
    if rc == 130:  # typer turns Ctrl-C / SIGTERM (KeyboardInterrupt) into a silent exit code 130
        typer.echo("error: interrupted", err=True)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    # run through the canonical module, whose ``app`` the cmd_* modules register on
    from segnext_geo.cli.app import main as _main  # type: ignore[import-not-found,unused-ignore]

    _main()
