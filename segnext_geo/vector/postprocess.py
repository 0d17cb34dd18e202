"""Post-processing of complete polygons: minimum area, hole filling, coverage simplification.

The order is fixed: polygons are complete (merged across block seams) before they get here,
then small polygons are dropped, then small holes are filled, then the whole set is
simplified with :func:`shapely.coverage_simplify` so neighbours keep shared edges.

Filling a hole absorbs whatever lies in it: a polygon inside a filled hole would overlap the
filled polygon, so it is dropped. Only polygons smaller than the hole threshold can lie in
such a hole; they are held back until the end (:attr:`Finished.deferred`) and checked
against every filled hole. Simplification needs the whole coverage, so with ``simplify``
every polygon is held until the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray

from .attributes import FeatureBatch, GeomArray, Meter
from .noding import node_pixel_polygons
from .parts import Parts

__all__ = ["Finished", "Finisher", "absorbed_by", "fill_small_holes", "simplify_coverage"]


def fill_small_holes(geoms: GeomArray, max_area_m2: float, meter: Meter) -> tuple[GeomArray, GeomArray]:
    """Remove interior rings enclosing less than ``max_area_m2``.

    Args:
        geoms: ``(n,)`` polygons or multipolygons in pixel coordinates.
        max_area_m2: holes strictly smaller than this (m², as :meth:`Meter.areas_m2`) are filled.
        meter: measures the holes.

    Returns:
        The geometries with small holes filled, and the filled holes as polygons (pixel space).
    """
    no_holes = np.empty(0, dtype=object)
    if len(geoms) == 0:
        return geoms, no_holes
    parts, owner = shapely.get_parts(geoms, return_index=True)
    with_holes = np.nonzero(shapely.get_num_interior_rings(parts) > 0)[0]
    if len(with_holes) == 0:
        return geoms, no_holes
    rings, ring_part = shapely.get_rings(parts[with_holes], return_index=True)
    first = np.r_[True, ring_part[1:] != ring_part[:-1]]  # the exterior ring leads each part
    exteriors = rings[first]
    interior = np.nonzero(~first)[0]
    hole_polys = shapely.polygons(rings[interior])
    small = meter.areas_m2(hole_polys) < max_area_m2
    if not small.any():
        return geoms, no_holes
    affected = set(ring_part[interior[small]].tolist())
    kept: dict[int, list[object]] = {k: [] for k in affected}
    for i, is_small in zip(interior.tolist(), small.tolist(), strict=True):
        k = int(ring_part[i])
        if k in kept and not is_small:
            kept[k].append(rings[i])
    new_parts = parts.copy()
    for k, holes in kept.items():
        new_parts[with_holes[k]] = shapely.Polygon(exteriors[k], holes)
    out = geoms.copy()
    for o in np.unique(owner[with_holes[list(affected)]]):
        lo, hi = np.searchsorted(owner, [o, o + 1])
        # a filled hole of one part may cover another part of the same multipolygon: union them
        out[o] = new_parts[lo] if hi - lo == 1 else shapely.union_all(new_parts[lo:hi])
    return out, hole_polys[small]


def absorbed_by(geoms: GeomArray, holes: GeomArray) -> NDArray[np.bool_]:
    """Which of ``geoms`` lie within one of the filled ``holes`` (both in pixel space).

    The whole geometry is tested, not one interior point: the polygon that owned a hole now
    covers it, and must not count as lying in its own hole.
    """
    out = np.zeros(len(geoms), bool)
    if len(geoms) == 0 or len(holes) == 0:
        return out
    hit, _ = shapely.STRtree(holes).query(geoms, predicate="within")
    out[hit] = True
    return out


def simplify_coverage(geoms: GeomArray, tolerance_px: float) -> GeomArray:
    """Simplify pixel-space polygons together with :func:`shapely.coverage_simplify`.

    Pixel polygons only have vertices where their own outline turns, so at a T-junction a
    shared edge carries a vertex on one side only; :func:`.noding.node_pixel_polygons` adds
    those vertices first, which makes the set a valid coverage whose shared edges are
    simplified once, identically for both neighbours (no gaps, no overlaps).
    """
    if len(geoms) == 0:
        return geoms
    out = shapely.coverage_simplify(node_pixel_polygons(geoms), tolerance_px)
    return np.asarray(out, dtype=object)


@dataclass
class Finished:
    """What :meth:`Finisher.finish` makes of complete polygons.

    ``features`` are ready to write now; ``deferred`` wait for the end (hole absorption,
    simplification); ``holes`` are the holes that were filled (pixel space).
    """

    features: FeatureBatch | None
    deferred: Parts
    holes: GeomArray
    dropped: int = 0


@dataclass
class Finisher:
    """Turns complete pixel-space polygons into features, in the fixed post-processing order.

    Args:
        meter: coordinates and measures.
        min_area_m2: drop polygons smaller than this (m²).
        fill_holes_m2: fill holes smaller than this (m²), absorbing what lies in them.
        simplify_px: coverage simplification tolerance in pixels.
        multi: write every geometry as a MultiPolygon (8-connectivity can join pixels at a corner).
        with_conf: probabilities were given (``Parts.conf_sum`` is set).
    """

    meter: Meter
    min_area_m2: float | None = None
    fill_holes_m2: float | None = None
    simplify_px: float | None = None
    multi: bool = False
    with_conf: bool = False

    def finish(self, parts: Parts) -> Finished:
        """Minimum area and hole filling; features for what can be written now."""
        dropped = 0
        if self.min_area_m2 and len(parts):
            keep = self.meter.areas_m2(parts.geoms) >= self.min_area_m2
            dropped = int((~keep).sum())
            if dropped:
                parts = parts.take(keep)
        holes: GeomArray = np.empty(0, dtype=object)
        candidate = np.zeros(len(parts), bool)
        if self.fill_holes_m2 and len(parts):
            parts.geoms, holes = fill_small_holes(parts.geoms, self.fill_holes_m2, self.meter)
            # only a polygon smaller than the threshold fits in a filled hole
            candidate = self.meter.areas_m2(parts.geoms) < self.fill_holes_m2 * (1 + 1e-9)
        if self.simplify_px is not None:
            return Finished(None, parts, holes, dropped)
        now = parts.take(~candidate) if candidate.any() else parts
        later = parts.take(candidate) if candidate.any() else Parts.empty(self.with_conf)
        return Finished(self.features(now) if len(now) else None, later, holes, dropped)

    def finish_deferred(self, deferred: Parts, holes: GeomArray) -> tuple[FeatureBatch | None, int]:
        """Drop polygons inside filled holes, simplify, and build the remaining features.

        Returns:
            The features (``None`` if there are none) and how many polygons were absorbed.
        """
        absorbed = 0
        if len(holes) and len(deferred):
            inside = absorbed_by(deferred.geoms, holes)
            absorbed = int(inside.sum())
            if absorbed:
                deferred = deferred.take(~inside)
        if self.simplify_px is not None and len(deferred):
            deferred.geoms = simplify_coverage(deferred.geoms, self.simplify_px)
        return (self.features(deferred) if len(deferred) else None), absorbed

    def features(self, parts: Parts) -> FeatureBatch:
        """Move ``parts`` to the output CRS and measure them."""
        geoms_crs = self.meter.to_crs(parts.geoms)
        out = self.meter.to_output(geoms_crs)
        if self.multi:
            single = shapely.get_type_id(out) == shapely.GeometryType.POLYGON
            if single.any():
                out = out.copy()
                out[single] = shapely.multipolygons(out[single, None])
        conf = None
        if parts.conf_sum is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                conf = parts.conf_sum / parts.pixels
        return FeatureBatch(
            wkb=shapely.to_wkb(out),
            class_id=parts.class_id.astype(np.int32),
            area_m2=self.meter.areas_m2(parts.geoms),
            perimeter_m=self.meter.perimeters_m(geoms_crs),
            mean_confidence=conf,
        )
