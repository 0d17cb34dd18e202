"""Post-processing of complete polygons: minimum area, hole filling, coverage simplification.

The order is fixed: polygons are complete (merged across block seams) before they get here,
then small polygons are dropped, then small holes are filled, then the whole set is
simplified with :func:`shapely.coverage_simplify` so neighbours keep shared edges.

Filling a hole absorbs whatever lies in it: a polygon inside a filled hole would overlap the
filled polygon, so it is dropped. Only polygons with a part smaller than the hole threshold
can lie in such a hole; they are held back until the end (:attr:`Finished.deferred`) and
checked against every filled hole.

With 8-connectivity a polygon can also lie *partly* in a hole: it leaves the hole through a
corner where the hole's ring touches another ring of its owner (a *leaky* hole), crossing
the owner's own diagonal joint. Such a polygon is not enclosed, so it is kept whole and the
owner does not fill the pixels it holds in the hole. Owners of leaky filled holes are
therefore held back too (they are rare: a hole that touches its polygon's outline at a point).

Simplification needs the whole coverage, so with ``simplify`` every polygon is held until
the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray

from .attributes import FeatureBatch, GeomArray, Meter
from .canonical import canonical_polygons, drop_collinear
from .noding import node_pixel_polygons
from .parts import Parts

__all__ = ["Finished", "Finisher", "absorb", "fill_small_holes", "has_small_part", "simplify_coverage"]


def fill_small_holes(
    geoms: GeomArray, max_area_m2: float, meter: Meter, find_leaky: bool = False
) -> tuple[GeomArray, GeomArray, NDArray[np.bool_]]:
    """Remove interior rings enclosing less than ``max_area_m2``.

    Args:
        geoms: ``(n,)`` polygons or multipolygons in pixel coordinates.
        max_area_m2: holes strictly smaller than this (m², as :meth:`Meter.areas_m2`) are filled.
        meter: measures the holes.
        find_leaky: also report which geometries filled a *leaky* hole: one whose ring touches
            another ring of the same geometry (its exterior, another hole, or another part), so
            that an 8-connected polygon of another class can pass through that corner.

    Returns:
        The geometries with small holes filled, the filled holes as polygons (pixel space), and
        ``(n,)`` flags of the geometries that filled a leaky hole (all False without ``find_leaky``).
    """
    no_holes = np.empty(0, dtype=object)
    leaky = np.zeros(len(geoms), bool)
    if len(geoms) == 0:
        return geoms, no_holes, leaky
    parts, owner = shapely.get_parts(geoms, return_index=True)
    with_holes = np.nonzero(shapely.get_num_interior_rings(parts) > 0)[0]
    if len(with_holes) == 0:
        return geoms, no_holes, leaky
    rings, ring_part = shapely.get_rings(parts[with_holes], return_index=True)
    first = np.r_[True, ring_part[1:] != ring_part[:-1]]  # the exterior ring leads each part
    exteriors = rings[first]
    interior = np.nonzero(~first)[0]
    hole_polys = shapely.polygons(rings[interior])
    small = meter.areas_m2(hole_polys) < max_area_m2
    if not small.any():
        return geoms, no_holes, leaky
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
    united = []
    for o in np.unique(owner[with_holes[list(affected)]]):
        lo, hi = np.searchsorted(owner, [o, o + 1])
        # a filled hole of one part may cover another part of the same multipolygon: union them
        out[o] = new_parts[lo] if hi - lo == 1 else shapely.union_all(new_parts[lo:hi])
        if hi - lo > 1:
            united.append(o)
    if united:
        out[united] = drop_collinear(out[united])
    if find_leaky:
        leaky[_leaky_owners(geoms, rings[interior[small]], owner[with_holes[ring_part[interior[small]]]])] = True
    return out, hole_polys[small], leaky


def _leaky_owners(geoms: GeomArray, holes: GeomArray, hole_owner: NDArray[np.int64]) -> NDArray[np.int64]:
    """Owners (indices into ``geoms``) of the hole rings ``holes`` that touch another ring of their owner."""
    owners = np.unique(hole_owner)
    parts, part_owner = shapely.get_parts(geoms[owners], return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    ring_owner = owners[part_owner[ring_part]]
    q, r = shapely.STRtree(rings).query(holes, predicate="intersects")
    same = ring_owner[r] == hole_owner[q]
    hits = np.bincount(q[same], minlength=len(holes))  # a ring always meets itself: leaky if 2 or more
    return np.unique(hole_owner[hits > 1])


def absorb(deferred: Parts, holes: GeomArray) -> tuple[Parts, int]:
    """Drop the polygons that lie in a filled hole; un-fill what polygons leaving a hole hold.

    A polygon all of whose parts lie within filled holes is absorbed (dropped). A polygon with
    only some parts in a filled hole (8-connectivity, through a leaky hole's corner) is kept
    whole, and every polygon that covers one of those parts (the hole's owner, which is held
    back too) loses it again. All geometries are in pixel space, so the differences are exact.

    Returns:
        The remaining polygons and how many were absorbed.
    """
    n = len(deferred)
    if n == 0 or len(holes) == 0:
        return deferred, 0
    parts, owner = shapely.get_parts(deferred.geoms, return_index=True)
    hit, _ = shapely.STRtree(holes).query(parts, predicate="within")
    inside = np.zeros(len(parts), bool)
    inside[hit] = True
    n_parts = np.bincount(owner, minlength=n)
    n_inside = np.bincount(owner[inside], minlength=n)
    absorbed = n_inside == n_parts
    partial = (n_inside > 0) & ~absorbed
    if partial.any():
        pieces = np.flatnonzero(inside & partial[owner])
        q, j = shapely.STRtree(deferred.geoms).query(parts[pieces], predicate="within")
        cover = (j != owner[pieces[q]]) & ~absorbed[j]
        if np.setdiff1d(np.arange(len(pieces)), q[cover]).size:
            raise RuntimeError("vectorize: a polygon leaves a filled hole whose owner was not held (internal error)")
        geoms = deferred.geoms.copy()
        changed = np.unique(j[cover])
        for k in changed.tolist():
            mine = parts[pieces[q[cover & (j == k)]]]
            geoms[k] = shapely.difference(geoms[k], shapely.union_all(mine))
        geoms[changed] = canonical_polygons(geoms[changed])
        deferred = Parts(geoms, deferred.class_id, deferred.pixels, deferred.key, deferred.conf_sum)
    return deferred.take(~absorbed), int(absorbed.sum())


def has_small_part(geoms: GeomArray, max_area_m2: float, meter: Meter) -> NDArray[np.bool_]:
    """``(n,)``: whether a (multi)polygon has a part smaller than ``max_area_m2`` (with a 1e-9 margin)."""
    out = np.zeros(len(geoms), bool)
    if len(geoms) == 0:
        return out
    parts, owner = shapely.get_parts(geoms, return_index=True)
    out[owner[meter.areas_m2(parts) < max_area_m2 * (1 + 1e-9)]] = True
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
        conf_quantum: the confidence of one unit of ``Parts.conf_sum``.

    Every geometry is put in canonical form (:func:`.canonical.canonical_polygons`) once it
    is complete, and polygons held to the end are simplified in the order of their first pixel,
    so the features do not depend on the block size.
    """

    meter: Meter
    min_area_m2: float | None = None
    fill_holes_m2: float | None = None
    simplify_px: float | None = None
    multi: bool = False
    with_conf: bool = False
    conf_quantum: float = 1.0

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
            parts.geoms, holes, leaky = fill_small_holes(
                parts.geoms, self.fill_holes_m2, self.meter, find_leaky=self.multi
            )
            # only a polygon with a part smaller than the threshold can lie in a filled hole, and only
            # the owner of a leaky hole may have to give pixels back (see absorb)
            candidate = has_small_part(parts.geoms, self.fill_holes_m2, self.meter) | leaky
        parts.geoms = np.asarray(shapely.normalize(parts.geoms), dtype=object)  # see .canonical
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
        deferred, absorbed = absorb(deferred, holes)
        deferred = deferred.take(np.argsort(deferred.key, kind="stable"))  # the order blocks cannot change
        if self.simplify_px is not None and len(deferred):
            deferred.geoms = np.asarray(shapely.normalize(simplify_coverage(deferred.geoms, self.simplify_px)))
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
                conf = np.where(parts.conf_sum < 0, np.nan, parts.conf_sum * self.conf_quantum / parts.pixels)
        return FeatureBatch(
            wkb=shapely.to_wkb(out),
            class_id=parts.class_id.astype(np.int32),
            area_m2=self.meter.areas_m2(parts.geoms),
            perimeter_m=self.meter.perimeters_m(parts.geoms, geoms_crs),
            mean_confidence=conf,
            key=parts.key,
        )
