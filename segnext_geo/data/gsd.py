"""The ground sample distance of a training set, recorded in the checkpoint (``ModelMeta.gsd_m``).

- torchgeo datasets: :data:`TORCHGEO_GSD`, their documented GSD (with the source of each value);
- GeoTIFF datasets: :func:`geotiff_gsd` measures every image raster with
  :func:`~segnext_geo.raster.gsd.raster_gsd` and records one value when they all agree within
  :data:`~segnext_geo.raster.gsd.DEFAULT_TOLERANCE`, else "varies";
- iSAID: varies (DOTA's Google Earth and satellite scenes); synthetic scenes: none.

``predict --gsd auto`` resamples a scene to ``gsd_m`` when it is known and keeps the scene's own
resolution when it is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..raster.gsd import DEFAULT_TOLERANCE, raster_gsd

__all__ = ["TORCHGEO_GSD", "DatasetGsd", "geotiff_gsd", "image_files", "torchgeo_gsd"]


@dataclass(frozen=True)
class DatasetGsd:
    """``gsd_m``: metres per pixel of the training imagery (``None``: unknown or varies); ``note``: why, in words."""

    gsd_m: float | None
    note: str


#: Documented GSD of the named torchgeo datasets (by torchgeo class name), with the source of each value.
TORCHGEO_GSD: dict[str, DatasetGsd] = {
    "LoveDA": DatasetGsd(0.3, "0.3 m (LoveDA, Wang et al. 2021; torchgeo's LoveDA docs)"),
    "Potsdam2D": DatasetGsd(0.05, "0.05 m true orthophotos (ISPRS 2D Semantic Labeling, Potsdam)"),
    "Vaihingen2D": DatasetGsd(0.09, "0.09 m true orthophotos (ISPRS 2D Semantic Labeling, Vaihingen)"),
    "InriaAerialImageLabeling": DatasetGsd(
        0.3, "0.3 m aerial orthoimagery (Inria Aerial Image Labeling; torchgeo's docs)"
    ),
    "DeepGlobeLandCover": DatasetGsd(0.5, "0.5 m satellite imagery (DeepGlobe 2018, Demir et al.)"),
    "LandCoverAI": DatasetGsd(None, "varies: 0.25 m and 0.5 m orthophotos (LandCover.ai, Boguszewski et al.)"),
    "GID15": DatasetGsd(
        None, "about 3-4 m Gaofen-2 multispectral (GID, Tong et al.; sources differ): not recorded as one value"
    ),
}

ISAID_GSD = DatasetGsd(None, "varies: Google Earth and Chinese satellite scenes (DOTA) at different resolutions")
SYNTHETIC_GSD = DatasetGsd(None, "synthetic scenes (no ground resolution)")


def torchgeo_gsd(cls_name: str) -> DatasetGsd:
    """The documented GSD of a torchgeo dataset, or unknown for one not in :data:`TORCHGEO_GSD`."""
    return TORCHGEO_GSD.get(cls_name, DatasetGsd(None, f"unknown: torchgeo's {cls_name} (not in segnext-geo's table)"))


def image_files(paths: str | Path | Sequence[str | Path], pattern: str) -> list[Path]:
    """The raster files of ``data.*_images``: files as given, folders searched recursively with ``pattern``."""
    items: Iterable[str | Path] = [paths] if isinstance(paths, str | Path) else paths
    out: list[Path] = []
    for p in items:
        path = Path(p)
        out.extend([path] if path.is_file() else sorted(path.rglob(pattern)) if path.is_dir() else [])
    return out


def geotiff_gsd(files: Sequence[Path], tolerance: float = DEFAULT_TOLERANCE) -> DatasetGsd:
    """The GSD of GeoTIFF training images: the mean when every raster is within ``tolerance`` of it.

    Rasters without a CRS make it unknown; rasters that differ by more than ``tolerance``
    (relative to the mean) make it "varies".
    """
    if not files:
        return DatasetGsd(None, "unknown: no image rasters")
    values: list[float] = []
    for f in files:
        g = raster_gsd(f)
        if g is None:
            return DatasetGsd(None, f"unknown: {f} has no CRS")
        values.append(g.mean)
    mean = sum(values) / len(values)
    lo, hi = min(values), max(values)
    n = f"{len(values)} raster{'s' if len(values) > 1 else ''}"
    if hi - mean > tolerance * mean or mean - lo > tolerance * mean:
        return DatasetGsd(None, f"varies: {lo:.4g}-{hi:.4g} m across {n}")
    return DatasetGsd(round(mean, 6), f"measured from {n} ({lo:.4g}-{hi:.4g} m)")
