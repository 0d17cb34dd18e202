"""Open and check the class raster (and optional probabilities) that ``vectorize`` reads.

Nothing here reads pixels: :func:`open_mask` and :func:`open_probs` only look at headers and
tags, so bad input fails in a second with a one-line :class:`~segnext_geo.errors.UserError`
before any block is processed. The block readers live in :mod:`.polygonize`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags

from ..errors import UserError
from ..raster.source import open_raster

__all__ = ["MaskSource", "ProbsSource", "class_name_lookup", "open_mask", "open_probs"]

#: dtypes ``rasterio.features.shapes`` polygonizes directly; other integer types are cast per block.
SHAPES_DTYPES = ("uint8", "int16", "uint16", "int32")


@dataclass(frozen=True)
class MaskSource:
    """A single-band integer class raster (no pixel data).

    ``transform`` maps pixel (col, row) to CRS coordinates; for a raster georeferenced by
    ground control points alone it is their best-fit affine (and ``notes`` says so).
    ``mask_kind`` says how invalid pixels are found: ``nodata`` (equal to ``nodata``),
    ``dataset`` (a per-dataset mask band, read with ``read_masks``) or ``none``.
    """

    path: str
    width: int
    height: int
    dtype: str
    nodata: int | None
    mask_kind: Literal["none", "nodata", "dataset"]
    transform: Affine
    crs_wkt: str | None
    crs_name: str | None
    tag_class_names: tuple[str, ...] | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbsSource:
    """Probabilities on the mask's grid: 1 band = confidence, K bands = per-class probabilities.

    Values are scaled by ``scale`` to 0-1 (``1/255`` for uint8 rasters, ``1`` for floats).
    """

    path: str
    count: int
    scale: float

    @property
    def per_class(self) -> bool:
        return self.count > 1


def _tag_class_names(src: rasterio.DatasetReader) -> tuple[tuple[str, ...] | None, str | None]:
    """The JSON list in the ``class_names`` tag (dataset or band 1), and a note if it is unreadable."""
    tag = src.tags().get("class_names") or src.tags(1).get("class_names")
    if not tag:
        return None, None
    try:
        names = json.loads(tag)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None, f"{src.name}: the class_names tag is not a JSON list of strings; using class_<id> names"
    return tuple(names), None


def open_mask(path: str | Path) -> MaskSource:
    """Open ``path`` and check that it is a single-band integer class raster.

    Raises:
        UserError: missing file, not a raster, several bands, or non-integer values (for example
            a probability raster given by mistake).
    """
    p = str(path)
    src = open_raster(p)
    with src:
        if src.count != 1:
            raise UserError(f"{p}: expected a single-band class raster, got {src.count} bands")
        dtype = src.dtypes[0]
        kind = np.dtype(dtype).kind
        if kind not in "iu":
            raise UserError(
                f"{p}: not an integer class raster (data type {dtype}); vectorize needs class ids, "
                "such as the mask written by predict"
            )
        nodata_val = src.nodata
        nodata: int | None = None
        notes: list[str] = []
        if nodata_val is not None and np.isfinite(nodata_val) and float(nodata_val).is_integer():
            nodata = int(nodata_val)
        flags = src.mask_flag_enums[0]
        if nodata is not None:
            mask_kind: Literal["none", "nodata", "dataset"] = "nodata"
        elif MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
            mask_kind = "dataset"
        else:
            mask_kind = "none"
        transform = src.transform
        crs = src.crs
        if crs is None:
            gcps, gcp_crs = src.gcps
            if gcps and gcp_crs is not None and len(gcps) >= 3:
                transform = rasterio.transform.from_gcps(gcps)
                crs = gcp_crs
                notes.append(f"{p}: georeferenced by ground control points; polygons use their best-fit affine")
        names, note = _tag_class_names(src)
        if note:
            notes.append(note)
        return MaskSource(
            path=p,
            width=src.width,
            height=src.height,
            dtype=dtype,
            nodata=nodata,
            mask_kind=mask_kind,
            transform=transform,
            crs_wkt=crs.to_wkt() if crs is not None else None,
            crs_name=(crs.to_string() or "custom CRS") if crs is not None else None,
            tag_class_names=names,
            notes=tuple(notes),
        )


def open_probs(path: str | Path, mask: MaskSource, class_names: Sequence[str] | None) -> ProbsSource:
    """Open the probability raster and check it lies on the mask's grid.

    Args:
        path: 1-band confidence or K-band per-class probabilities (uint8 0-255 or float 0-1).
        mask: the class raster it belongs to.
        class_names: known class names (their count must equal K for a K-band raster).

    Raises:
        UserError: a different size or transform, an unsupported data type, or a band count
            that does not match the classes.
    """
    p = str(path)
    src = open_raster(p)
    with src:
        if (src.width, src.height) != (mask.width, mask.height):
            raise UserError(
                f"--probs: {p} is {src.width}x{src.height} px but the mask is {mask.width}x{mask.height} px"
            )
        if not src.transform.almost_equals(mask.transform, precision=1e-9):
            raise UserError(f"--probs: {p} is not on the mask's grid (its transform differs)")
        dtype = np.dtype(src.dtypes[0])
        if dtype == np.uint8:
            scale = 1.0 / 255.0
        elif dtype.kind == "f":
            scale = 1.0
        else:
            raise UserError(f"--probs: {p} has data type {dtype}; expected uint8 (0-255) or float (0-1)")
        if src.count > 1 and class_names is not None and src.count != len(class_names):
            raise UserError(
                f"--probs: {p} has {src.count} bands but there are {len(class_names)} classes; give per-class "
                "probabilities (one band per class) or a 1-band confidence raster"
            )
        return ProbsSource(path=p, count=src.count, scale=scale)


def class_name_lookup(names: Sequence[str] | None) -> dict[int, str]:
    """``{class_id: name}`` for the given names (ids 0..K-1); missing ids fall back to ``class_<id>``."""
    return {i: str(n) for i, n in enumerate(names or ())}
