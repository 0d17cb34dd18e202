"""Pixel-space polygons to output coordinates, areas in m² and perimeters in m.

Polygons are built and merged in pixel coordinates (integers, so seams match exactly) and
only moved to the raster's CRS at the end, with the same formula GDAL's polygonizer uses
(``x = c + col*a + row*b``, ``y = f + col*d + row*e``), so the output coordinates are the ones
``rasterio.features.shapes`` gives on the whole array.

Measures, by kind of CRS:

- projected: planar area and length in the CRS, times its unit's size in metres (feet work);
- geographic: area in a Lambert azimuthal equal-area projection centred on the raster (same
  datum), perimeter as the geodesic length of every ring on the CRS's ellipsoid;
- none: the raster's own units (pixels for an identity transform), flagged by a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray

from ..errors import UserError

__all__ = ["FeatureBatch", "Meter"]

GeomArray = NDArray[np.object_]


@dataclass
class FeatureBatch:
    """Features ready to write: WKB geometries in the output CRS and their attributes.

    ``class_name`` and ``source`` are added by the writer (they are per-class and constant).
    ``mean_confidence`` is ``None`` when no probabilities were given.
    """

    wkb: NDArray[np.object_]
    class_id: NDArray[np.int32]
    area_m2: NDArray[np.float64]
    perimeter_m: NDArray[np.float64]
    mean_confidence: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.wkb)

    @classmethod
    def concat(cls, batches: list[FeatureBatch]) -> FeatureBatch:
        """One batch holding every feature of ``batches`` (which must not be empty)."""
        conf = None if batches[0].mean_confidence is None else np.concatenate([b.mean_confidence for b in batches])
        return cls(
            wkb=np.concatenate([b.wkb for b in batches]),
            class_id=np.concatenate([b.class_id for b in batches]),
            area_m2=np.concatenate([b.area_m2 for b in batches]),
            perimeter_m=np.concatenate([b.perimeter_m for b in batches]),
            mean_confidence=conf,
        )


def _affine_fn(t: Affine) -> Any:
    a, b, c, d, e, f = t.a, t.b, t.c, t.d, t.e, t.f

    def apply(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        col, row = xy[:, 0], xy[:, 1]
        # same evaluation order as GDALPolygonize: gt0 + col*gt1 + row*gt2
        return np.column_stack((c + col * a + row * b, f + col * d + row * e))

    return apply


def ring_coordinates(geoms: GeomArray) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Every ring's coordinates ``(N, 2)``, the ring number of each, and the geometry it belongs to."""
    parts, part_owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    return coords, ring_idx, part_owner[ring_part[ring_idx]]


@dataclass
class Meter:
    """Converts pixel-space geometries to the output CRS and measures them in metres.

    Args:
        transform: the raster's affine transform (pixel col/row -> CRS x/y).
        crs_wkt: the raster's CRS as WKT, or ``None`` (measures then stay in raster units).
        center_px: a pixel (col, row) near the raster's centre (centre of the equal-area
            projection used for geographic rasters).
        to_wgs84: write geometries in EPSG:4326 (lon/lat) instead of the raster's CRS.
    """

    transform: Affine
    crs_wkt: str | None
    center_px: tuple[float, float] = (0.0, 0.0)
    to_wgs84: bool = False
    kind: Literal["projected", "geographic", "none"] = field(init=False)
    unit_factor: float = field(init=False, default=1.0)
    notes: list[str] = field(init=False, default_factory=list)
    _cache: dict[str, Any] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.crs_wkt is None:
            self.kind = "none"
            if self.to_wgs84:
                raise UserError("--to-wgs84: the mask has no CRS, so its polygons cannot be reprojected")
            return
        crs = self._crs()
        if crs.is_geographic:
            self.kind = "geographic"
            return
        self.kind = "projected"
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else None
        if not unit or not np.isfinite(unit) or unit <= 0:
            self.notes.append("the CRS has no known linear unit; area_m2 and perimeter_m assume metres")
            unit = 1.0
        self.unit_factor = float(unit)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}  # pyproj objects are rebuilt in each process
        return state

    # -- pyproj objects, built lazily ------------------------------------------------------
    def _crs(self) -> Any:
        if "crs" not in self._cache:
            import pyproj

            assert self.crs_wkt is not None, "a CRS is needed for metric measures"
            self._cache["crs"] = pyproj.CRS.from_wkt(self.crs_wkt)
        return self._cache["crs"]

    def _equal_area(self) -> Any:
        """Transformer raster CRS (lon/lat) -> Lambert azimuthal equal-area centred on the raster."""
        if "ea" not in self._cache:
            from pyproj import Transformer
            from pyproj.crs import ProjectedCRS
            from pyproj.crs.coordinate_operation import LambertAzimuthalEqualAreaConversion

            crs = self._crs()
            lon, lat = _affine_fn(self.transform)(np.array([self.center_px], np.float64))[0]
            laea = ProjectedCRS(
                conversion=LambertAzimuthalEqualAreaConversion(
                    latitude_natural_origin=lat, longitude_natural_origin=lon
                ),
                geodetic_crs=crs.geodetic_crs,
            )
            self._cache["ea"] = Transformer.from_crs(crs, laea, always_xy=True)
        return self._cache["ea"]

    def _wgs84(self) -> Any:
        if "wgs84" not in self._cache:
            from pyproj import Transformer

            self._cache["wgs84"] = Transformer.from_crs(self._crs(), "EPSG:4326", always_xy=True)
        return self._cache["wgs84"]

    # -- coordinates -------------------------------------------------------------------------
    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units² (``|det(transform)|``)."""
        t = self.transform
        return abs(t.a * t.e - t.b * t.d)

    @property
    def output_crs_wkt(self) -> str | None:
        """The CRS the features are written in."""
        if self.to_wgs84:
            import pyproj

            return pyproj.CRS.from_epsg(4326).to_wkt()
        return self.crs_wkt

    def to_crs(self, geoms_px: GeomArray) -> GeomArray:
        """Pixel (col, row) geometries -> raster CRS geometries."""
        return shapely.transform(geoms_px, _affine_fn(self.transform))

    def to_output(self, geoms_crs: GeomArray) -> GeomArray:
        """Raster CRS geometries -> output CRS (EPSG:4326 lon/lat when ``to_wgs84``)."""
        if not self.to_wgs84 or len(geoms_crs) == 0:
            return geoms_crs
        tr = self._wgs84()

        def fn(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            x, y = tr.transform(xy[:, 0], xy[:, 1])
            return np.column_stack((x, y))

        out = shapely.transform(geoms_crs, fn)
        bad = ~shapely.is_valid(out)
        if bad.any():  # extreme reprojections only; keep every geometry valid
            out[bad] = shapely.make_valid(out[bad], method="structure", keep_collapsed=False)
        return out

    # -- measures ----------------------------------------------------------------------------
    def areas_m2(self, geoms_px: GeomArray) -> NDArray[np.float64]:
        """Area of each pixel-space geometry in m² (equal-area for geographic CRSs)."""
        if len(geoms_px) == 0:
            return np.zeros(0)
        if self.kind == "geographic":
            ea = self._equal_area()
            aff = _affine_fn(self.transform)

            def fn(xy: NDArray[np.float64]) -> NDArray[np.float64]:
                ll = aff(xy)
                x, y = ea.transform(ll[:, 0], ll[:, 1])
                return np.column_stack((x, y))

            return shapely.area(shapely.transform(geoms_px, fn))
        return shapely.area(geoms_px) * (self.pixel_area * self.unit_factor**2)

    def perimeters_m(self, geoms_crs: GeomArray) -> NDArray[np.float64]:
        """Boundary length (exterior and holes) of each raster-CRS geometry in m (geodesic if geographic)."""
        if len(geoms_crs) == 0:
            return np.zeros(0)
        if self.kind != "geographic":
            return shapely.length(geoms_crs) * self.unit_factor
        coords, ring_idx, owner = ring_coordinates(geoms_crs)
        same = ring_idx[:-1] == ring_idx[1:]
        _, _, dist = self._crs().get_geod().inv(coords[:-1, 0], coords[:-1, 1], coords[1:, 0], coords[1:, 1])
        return np.bincount(owner[:-1][same], weights=np.asarray(dist)[same], minlength=len(geoms_crs))

    def pixel_size_m(self) -> float:
        """Mean pixel side in metres (at the raster's centre for geographic CRSs); raster units if no CRS."""
        if self.kind != "geographic":
            return float(np.sqrt(self.pixel_area) * self.unit_factor)
        cx, cy = self.center_px
        square = shapely.box(cx, cy, cx + 1, cy + 1)
        return float(np.sqrt(self.areas_m2(np.array([square]))[0]))
