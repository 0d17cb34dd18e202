"""Pixel-space polygons to output coordinates, areas in m² and perimeters in m.

Polygons are built and merged in pixel coordinates (integers, so seams match exactly) and
only moved to the raster's CRS at the end, with the same formula GDAL's polygonizer uses
(``x = c + col*a + row*b``, ``y = f + col*d + row*e``), so the output coordinates are the ones
``rasterio.features.shapes`` gives on the whole array.

Measures, by kind of CRS:

- projected: planar area and length in the CRS, times its unit's size in metres (feet work);
- geographic: exact on the CRS's ellipsoid for edges that are straight in lon/lat, as the
  raster's pixel edges are (parallels and meridians for a north-up raster): area by Green's
  theorem with the ellipsoid's authalic zone function ``S(phi)`` (``dA = S'(phi) dphi dlambda``),
  length by integrating the meridional and parallel radii along each edge. Along a parallel
  both are closed forms; other edges (rotated rasters, simplified polygons) use 8-point
  Gauss-Legendre quadrature, exact to ~1e-15 for edges of a few degrees. Nothing is measured
  along chords, and the result does not depend on which vertices an edge has;
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
    ``mean_confidence`` is ``None`` when no probabilities were given. ``key`` is each
    polygon's first pixel (row-major): the writer writes features in that order.
    """

    wkb: NDArray[np.object_]
    class_id: NDArray[np.int32]
    area_m2: NDArray[np.float64]
    perimeter_m: NDArray[np.float64]
    mean_confidence: NDArray[np.float64] | None = None
    key: NDArray[np.int64] | None = None

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
            key=None if batches[0].key is None else np.concatenate([b.key for b in batches]),
        )


def _affine_fn(t: Affine) -> Any:
    a, b, c, d, e, f = t.a, t.b, t.c, t.d, t.e, t.f

    def apply(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        col, row = xy[:, 0], xy[:, 1]
        # same evaluation order as GDALPolygonize: gt0 + col*gt1 + row*gt2
        return np.column_stack((c + col * a + row * b, f + col * d + row * e))

    return apply


def _gauss_legendre(n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Nodes on [0, 1] and weights (summing to 1) of ``n``-point Gauss-Legendre quadrature."""
    u, w = np.polynomial.legendre.leggauss(n)
    return (u + 1.0) / 2.0, w / 2.0


_GAUSS = _gauss_legendre(8)


def _zone(phi: NDArray[np.float64], a: float, e2: float) -> NDArray[np.float64]:
    """Ellipsoid area between the equator and latitude ``phi`` (radians), per radian of longitude (m²)."""
    s = np.sin(phi)
    if e2 == 0.0:
        return a * a * s
    e = np.sqrt(e2)
    return a * a * (1.0 - e2) / 2.0 * (s / (1.0 - e2 * s * s) + np.arctanh(e * s) / e)


def _meridian_radius(phi: NDArray[np.float64], a: float, e2: float) -> NDArray[np.float64]:
    """Radius of curvature along the meridian, M (m)."""
    return a * (1.0 - e2) / (1.0 - e2 * np.sin(phi) ** 2) ** 1.5


def _parallel_radius(phi: NDArray[np.float64], a: float, e2: float) -> NDArray[np.float64]:
    """Radius of the parallel, N cos(phi) (m)."""
    return a * np.cos(phi) / np.sqrt(1.0 - e2 * np.sin(phi) ** 2)


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

    def _ellipsoid(self) -> tuple[float, float, float]:
        """``(a, e², radians per CRS angular unit)`` of a geographic CRS."""
        if "ellipsoid" not in self._cache:
            crs = self._crs()
            ell = crs.ellipsoid
            a = float(ell.semi_major_metre)
            inv_f = float(ell.inverse_flattening)
            f = 1.0 / inv_f if np.isfinite(inv_f) and inv_f > 0 else 0.0
            unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else None
            rad = float(unit) if unit and np.isfinite(unit) and unit > 0 else np.pi / 180.0
            self._cache["ellipsoid"] = (a, f * (2.0 - f), rad)
        return self._cache["ellipsoid"]

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
        """Area of each pixel-space geometry in m² (exact on the ellipsoid for geographic CRSs)."""
        if len(geoms_px) == 0:
            return np.zeros(0)
        if self.kind == "geographic":
            return self._geographic(geoms_px)[0]
        return shapely.area(geoms_px) * (self.pixel_area * self.unit_factor**2)

    def perimeters_m(self, geoms_px: GeomArray, geoms_crs: GeomArray | None = None) -> NDArray[np.float64]:
        """Boundary length (exterior and holes) of each pixel-space geometry in m (on the
        ellipsoid for geographic CRSs). ``geoms_crs``: the same in the raster's CRS, if at hand."""
        if len(geoms_px) == 0:
            return np.zeros(0)
        if self.kind == "geographic":
            return self._geographic(geoms_px)[1]
        crs_geoms = geoms_crs if geoms_crs is not None else self.to_crs(geoms_px)
        return shapely.length(crs_geoms) * self.unit_factor

    def _geographic(self, geoms_px: GeomArray) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(areas m², perimeters m)`` of pixel-space geometries in a geographic CRS.

        Each edge is straight in lon/lat (``lambda``, ``phi`` linear along it). Area: per ring
        ``|sum over edges of dlambda * mean(S(phi) - S(phi0))|`` (Green's theorem; ``S`` is the
        area from the equator to ``phi`` per radian of longitude; subtracting ``S(phi0)`` at the
        raster's centre changes nothing for a closed ring and keeps the sum precise), exteriors
        minus holes. Length: ``integral of sqrt((M dphi)² + (N cos(phi) dlambda)²)``.
        """
        a, e2, rad = self._ellipsoid()
        t = self.transform
        parts, part_owner = shapely.get_parts(geoms_px, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
        exterior = np.r_[True, ring_part[1:] != ring_part[:-1]]  # the first ring of each part
        ring_owner = part_owner[ring_part]
        same = ring_idx[:-1] == ring_idx[1:]
        edge_ring = ring_idx[:-1][same]
        x0, y0 = coords[:-1][same, 0], coords[:-1][same, 1]
        dx, dy = coords[1:][same, 0] - x0, coords[1:][same, 1] - y0
        lam_d = (dx * t.a + dy * t.b) * rad  # from pixel differences: no cancellation
        phi0 = (t.f + x0 * t.d + y0 * t.e) * rad
        phi_d = (dx * t.d + dy * t.e) * rad
        cx, cy = self.center_px
        phi_ref = (t.f + cx * t.d + cy * t.e) * rad
        s_ref = _zone(np.array([phi_ref]), a, e2)[0]

        along = phi_d == 0  # along a parallel: closed forms
        mean_s = np.empty(len(x0))
        length = np.empty(len(x0))
        mean_s[along] = _zone(phi0[along], a, e2) - s_ref
        length[along] = _parallel_radius(phi0[along], a, e2) * np.abs(lam_d[along])
        other = np.flatnonzero(~along)
        if len(other):
            u, w = _GAUSS
            phi = phi0[other, None] + phi_d[other, None] * u[None, :]  # (n, 8) quadrature latitudes
            mean_s[other] = (_zone(phi, a, e2) - s_ref) @ w
            speed = np.hypot(
                _meridian_radius(phi, a, e2) * phi_d[other, None], _parallel_radius(phi, a, e2) * lam_d[other, None]
            )
            length[other] = speed @ w
        ring_area = np.abs(np.bincount(edge_ring, weights=lam_d * mean_s, minlength=len(rings)))
        signed = np.where(exterior, ring_area, -ring_area)
        n = len(geoms_px)
        areas = np.bincount(ring_owner, weights=signed, minlength=n)
        perims = np.bincount(ring_owner[edge_ring], weights=length, minlength=n)
        return areas, perims

    def pixel_size_m(self) -> float:
        """Mean pixel side in metres (at the raster's centre for geographic CRSs); raster units if no CRS."""
        if self.kind != "geographic":
            return float(np.sqrt(self.pixel_area) * self.unit_factor)
        cx, cy = self.center_px
        square = shapely.box(cx, cy, cx + 1, cy + 1)
        return float(np.sqrt(self.areas_m2(np.array([square]))[0]))
