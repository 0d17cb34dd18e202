"""``segnext-geo export``: ONNX export verified with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app


@app.command()
def export(
    checkpoint: Annotated[
        str, typer.Argument(help="Checkpoint to export: a file (any family), a pretrained name or a URL.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    tile_size: Annotated[int, typer.Option(help="Input side in pixels used for tracing and verification.")] = 1024,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic batch, height and width axes.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Export a checkpoint to ONNX and check onnxruntime against PyTorch.

    The NMF runs its fixed 7 steps from deterministic bases baked into the graph: no random op
    and no device-specific call, so the file runs in onnxruntime, TensorRT or OpenVINO.

    Example: segnext-geo export runs/isaid/best.ckpt --out segnext_t.onnx --tile-size 1024 --dynamic

    Example: segnext-geo export segnext_t_isaid --out segnext_t_isaid.onnx --tile-size 896
    """
    from segnext_geo.export import export_onnx

    r = export_onnx(checkpoint, out, tile_size=tile_size, dynamic=dynamic, opset=opset, overwrite=overwrite)
    typer.echo(
        f"wrote {r.path} ({r.path.stat().st_size / 1e6:.1f} MB, opset {opset}, {'dynamic' if dynamic else 'static'})"
    )
    typer.echo(
        f"onnxruntime vs PyTorch at {r.tile_size}^2: max |diff| {r.max_abs_diff:.2e} "
        f"({r.max_rel_diff:.1e} of the largest logit), labels agree {r.label_agreement * 100:.3f}%, "
        f"{r.onnx_ms:.0f} ms vs {r.torch_ms:.0f} ms"
    )
