"""Open and check the class raster (and optional probabilities) that ``vectorize`` reads.

:func:`open_mask` and :func:`open_probs` look at headers and tags, and :func:`open_mask` at a
sample of at most ~1 MPix (an overview or a fixed grid of windows) to tell a class raster from
an image, so bad input fails in a second with a one-line :class:`~segnext_geo.errors.UserError`
before any block is processed. The block readers live in :mod:`.polygonize`.

Validity follows GDAL's masks exactly as ``predict`` reads scenes
(:func:`segnext_geo.raster.source.validity_of`): a per-dataset mask (internal or ``.msk``)
wins over the nodata value, and a ``--nodata`` override replaces the nodata value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..errors import UserError
from ..raster.normalize import sample_windows
from ..raster.source import Validity, check_nodata, open_raster, read_validity, validity_of

__all__ = ["MAX_CLASSES", "MaskSource", "ProbsSource", "class_name_lookup", "not_classes", "open_mask", "open_probs"]

#: dtypes ``rasterio.features.shapes`` polygonizes directly; other integer types are cast per block.
SHAPES_DTYPES = ("uint8", "int16", "uint16", "int32")

#: Resolution to which float confidences are summed (exactly, as integers).
FLOAT_QUANTUM = 2.0**-24

#: More distinct values than any segmentation has classes: without a ``class_names`` tag such a
#: raster is an image, not classes, and is refused unless ``--force-classes``.
MAX_CLASSES = 1000


@dataclass(frozen=True)
class MaskSource:
    """A single-band integer class raster (no pixel data).

    ``transform`` maps pixel (col, row) to CRS coordinates; for a raster georeferenced by
    ground control points alone it is their best-fit affine (and ``notes`` says so).
    ``validity`` says how invalid pixels are found (GDAL's masks, as ``predict`` reads them).
    ``float_classes`` marks a float raster accepted with ``--force-classes`` (its values must
    be whole numbers).
    """

    path: str
    width: int
    height: int
    dtype: str
    validity: Validity
    transform: Affine
    crs_wkt: str | None
    crs_name: str | None
    tag_class_names: tuple[str, ...] | None
    notes: tuple[str, ...] = ()
    float_classes: bool = False


@dataclass(frozen=True)
class ProbsSource:
    """Probabilities on the mask's grid: 1 band = confidence, K bands = per-class probabilities.

    Confidences are summed as integers: a uint8 value as it is (``quantum`` 1/255), a float
    value rounded to a multiple of ``quantum`` = 2**-24 (float32's resolution near 1), so the
    sums over a polygon's pieces are exact and do not depend on how blocks cut it.
    """

    path: str
    count: int
    quantum: float

    @property
    def is_float(self) -> bool:
        return self.quantum != 1.0 / 255.0

    @property
    def per_class(self) -> bool:
        return self.count > 1


def _tag_class_names(src: rasterio.DatasetReader, shown: str) -> tuple[tuple[str, ...] | None, str | None]:
    """The JSON list in the ``class_names`` tag (dataset or band 1), and a note if it is unreadable."""
    tag = src.tags().get("class_names") or src.tags(1).get("class_names")
    if not tag:
        return None, None
    try:
        names = json.loads(tag)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None, f"{shown}: the class_names tag is not a JSON list of strings; using class_<id> names"
    return tuple(names), None


def open_mask(
    path: str | Path,
    nodata: float | None = None,
    force_classes: bool = False,
    named: bool = False,
    shown: str | None = None,
) -> MaskSource:
    """Open ``path`` and check that it is a single-band class raster.

    Args:
        path: the class raster.
        nodata: replaces the raster's nodata value (``--nodata``); masks still apply.
        force_classes: accept a raster that does not look like classes (``--force-classes``):
            a float raster (of whole numbers), or more than :data:`MAX_CLASSES` distinct values.
        named: the classes are named (``--class-names``), as a ``class_names`` tag would.
        shown: the name its notes give the raster (default: ``path``); ``predict`` names the
            user's scene, not its temporary class raster.

    Raises:
        UserError: missing or empty file, not a raster, several bands, a float raster or one
            with more than :data:`MAX_CLASSES` distinct values and no ``class_names`` tag
            (without ``force_classes``), or a ``nodata`` the data type cannot hold.
    """
    p = str(path)
    src = open_raster(p)
    with src:
        if src.count != 1:
            raise UserError(f"{p}: expected a single-band class raster, got {src.count} bands")
        dtype = src.dtypes[0]
        kind = np.dtype(dtype).kind
        if kind not in "iuf" or (kind == "f" and not force_classes):
            raise UserError(
                f"{p}: not an integer class raster (data type {dtype}); vectorize needs class ids, such as the "
                "mask written by predict"
                + ("; pass --force-classes if its values are whole-number class ids" if kind == "f" else "")
            )
        if nodata is not None:
            nodata = check_nodata(nodata, dtype, p)
        validity = validity_of(src, (1,), nodata)
        notes: list[str] = []
        transform = src.transform
        crs = src.crs
        if crs is None:
            gcps, gcp_crs = src.gcps
            if gcps and gcp_crs is not None and len(gcps) >= 3:
                transform = rasterio.transform.from_gcps(gcps)
                crs = gcp_crs
                notes.append(
                    f"{shown or p}: georeferenced by ground control points; polygons use their best-fit affine"
                )
        names, note = _tag_class_names(src, shown or p)
        if note:
            notes.append(note)
        if names is None and not named and not force_classes:
            _refuse_images(src, p, validity)
        return MaskSource(
            path=p,
            width=src.width,
            height=src.height,
            dtype=dtype,
            validity=validity,
            transform=transform,
            crs_wkt=crs.to_wkt() if crs is not None else None,
            crs_name=(crs.to_string() or "custom CRS") if crs is not None else None,
            tag_class_names=names,
            notes=tuple(notes),
            float_classes=kind == "f",
        )


def _refuse_images(src: rasterio.DatasetReader, p: str, validity: Validity) -> None:
    """Refuse a raster whose sample holds more than :data:`MAX_CLASSES` distinct valid values.

    Reads at most ~1 MPix: an overview when there is one, else a fixed grid of windows.
    """
    h, w = src.height, src.width
    budget = 1 << 20
    chunks: list[np.ndarray] = []
    try:
        if src.overviews(1) and h * w > budget:
            f = np.sqrt(h * w / budget)
            small = (max(1, round(h / f)), max(1, round(w / f)))
            windows: list[tuple[Window, tuple[int, int] | None]] = [(Window(0, 0, w, h), small)]
        else:
            windows = [(win, None) for win in sample_windows(h, w, budget=budget)]
        for win, out_shape in windows:
            a = src.read(1, window=win, out_shape=out_shape)
            valid = read_validity(src, validity, a[None], win, out_shape)
            chunks.append(a[valid[0]] if valid is not None else a.ravel())
            if len(np.unique(np.concatenate(chunks))) > MAX_CLASSES:
                break
    except RasterioError as e:
        raise UserError(f"{p}: cannot read it (truncated or corrupt file?): {' '.join(str(e).split())[:200]}") from None
    n = len(np.unique(np.concatenate(chunks))) if chunks else 0
    if n > MAX_CLASSES:
        raise not_classes(p)


def not_classes(p: str) -> UserError:
    """The error for a raster with more than :data:`MAX_CLASSES` distinct values and no class names."""
    return UserError(
        f"{p}: has more than {MAX_CLASSES:,} distinct values and no class_names tag, so it looks like an image, "
        "not a class raster; vectorize it anyway with --force-classes (or name the classes with --class-names)"
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
            quantum = 1.0 / 255.0
        elif dtype.kind == "f":
            quantum = FLOAT_QUANTUM
        else:
            raise UserError(f"--probs: {p} has data type {dtype}; expected uint8 (0-255) or float (0-1)")
        if src.count > 1 and class_names is not None and src.count != len(class_names):
            raise UserError(
                f"--probs: {p} has {src.count} bands but there are {len(class_names)} classes; give per-class "
                "probabilities (one band per class) or a 1-band confidence raster"
            )
        return ProbsSource(path=p, count=src.count, quantum=quantum)


def class_name_lookup(names: Sequence[str] | None) -> dict[int, str]:
    """``{class_id: name}`` for the given names (ids 0..K-1); missing ids fall back to ``class_<id>``."""
    return {i: str(n) for i, n in enumerate(names or ())}
