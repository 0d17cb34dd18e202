"""The predict options shared by ``predict`` and ``batch``: one help text per flag, one builder.

Each alias is an ``Annotated`` type for a command parameter; :func:`build_options` turns the
parsed values into one validated :class:`~segnext_geo.inference.PredictOptions` (errors name
the flag). No logic lives here beyond assembling the object.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from segnext_geo.inference import PredictOptions


class Blend(StrEnum):
    hann = "hann"
    taper = "taper"
    none = "none"


class TTA(StrEnum):
    none = "none"
    flip = "flip"
    d4 = "d4"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Compile(StrEnum):
    auto = "auto"
    off = "off"
    on = "on"


class Normalization(StrEnum):
    auto = "auto"
    meanstd = "meanstd"
    percentile = "percentile"


TileSize = Annotated[int, typer.Option(help="Tile side in px (rounded to a multiple of 32, >= 64).")]
Overlap = Annotated[int, typer.Option(help="Px shared by neighbouring tiles (<= half a tile).")]
BatchSize = Annotated[
    int, typer.Option(help="Tiles per forward pass (CPU and --deterministic: the output does not depend on it).")
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Bands = Annotated[
    str | None, typer.Option(help="1-based bands in model order, e.g. 3,2,1 (default: the checkpoint's).")
]
Nodata = Annotated[
    float | None, typer.Option(help="Treat this value as nodata in every band (overrides the file's nodata).")
]
BlendOpt = Annotated[Blend, typer.Option(help="hann (cosine taper for small overlaps), taper, or none (centre crop).")]
TTAOpt = Annotated[TTA, typer.Option(help="Test-time augmentation: none, flip (3 passes) or d4 (8).")]
Workers = Annotated[int, typer.Option(help="Threads reading tiles while the model runs (0: none).")]
WorkingSet = Annotated[
    int | None,
    typer.Option(help="Largest super-tile side in px (default: automatic, within --max-memory)."),
]
MaxMemory = Annotated[
    str,
    typer.Option(
        help="Memory budget, e.g. 3G. The automatic working set (and, if needed, a smaller tile) keeps the "
        "estimated peak under it; the peak formula is in the command's help."
    ),
]
PrecisionOpt = Annotated[
    Precision, typer.Option(help="auto: fp32 on CPU, bf16 autocast on CUDA (NMF and softmax in fp32).")
]
CompileOpt = Annotated[
    Compile, typer.Option(help="torch.compile: auto compiles when the scene has enough tiles to repay it.")
]
Deterministic = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        help="Image-by-image forwards, deterministic cuDNN: same bytes at any batch size.",
    ),
]
NormalizationOpt = Annotated[
    Normalization, typer.Option(help="auto: checkpoint mean/std for uint8, scene-wide 2-98% stretch otherwise.")
]
MinArea = Annotated[float | None, typer.Option(help="Vector output: drop polygons smaller than this (m²).")]
FillHoles = Annotated[float | None, typer.Option(help="Vector output: fill holes smaller than this (m²).")]
#: ``--simplify`` is described in these words by predict, batch and vectorize.
SIMPLIFY_HELP = (
    "Coverage-simplify (neighbours keep shared edges): tolerance in metres, or pixels with 'px' (2.5, 1.5px; 0: off)."
)
Simplify = Annotated[str | None, typer.Option(help=f"Vector output: {SIMPLIFY_HELP}")]
Connectivity = Annotated[int | None, typer.Option(help="Vector output: pixel connectivity, 4 or 8 (default 4).")]
KeepBackground = Annotated[bool, typer.Option("--keep-background", help="Vector output: also write class 0 polygons.")]
GsdOpt = Annotated[
    str,
    typer.Option(
        "--gsd",
        help="Ground resolution the model sees: auto (resample to the model's training GSD when known and more "
        "than 10% away), native (never resample), or metres (e.g. 0.3). The output stays on the scene's grid.",
    ),
]

Asset = Annotated[
    str | None,
    typer.Option(help="STAC input: the asset to read (default: 'visual', else red/green/blue by eo:bands)."),
]
Bbox = Annotated[
    str | None,
    typer.Option(
        help="Area of interest MINX,MINY,MAXX,MAXY in --bbox-crs (lon/lat by default): only tiles touching it "
        "run; the output covers its window on the scene's grid, nodata outside it."
    ),
]
BboxCrs = Annotated[str, typer.Option(help="CRS of --bbox, e.g. EPSG:32632.")]
Aoi = Annotated[
    str | None,
    typer.Option(help="Area of interest: polygons in any vector file GDAL reads, any CRS (not with --bbox)."),
]
AoiLayer = Annotated[str | None, typer.Option(help="The layer of --aoi to read (when it has several).")]


def build_options(values: dict[str, Any]) -> PredictOptions:
    """A :class:`PredictOptions` from a command's parsed values (vector options only when one is given)."""
    from segnext_geo.inference import PredictOptions
    from segnext_geo.vector import VectorOptions

    v = {k: values.get(k) for k in ("min_area", "fill_holes_below", "simplify", "connectivity")}
    keep = bool(values.get("keep_background"))
    vector = None
    if keep or any(x is not None for x in v.values()):
        given = {k: x for k, x in v.items() if x is not None}
        vector = VectorOptions(keep_background=keep, **given)
    fields = set(PredictOptions.__dataclass_fields__) - {"vector"}
    plain: dict[str, Any] = {
        k: (x.value if isinstance(x, StrEnum) else x) for k, x in values.items() if k in fields and x is not None
    }
    return PredictOptions(**plain, vector=vector)
