"""One canonical form for pixel polygons, so the output does not depend on how blocks cut them.

A polygon that crossed block seams is the union of its pieces: it keeps a vertex wherever a
seam crossed a straight edge, and its rings start wherever the union put them. The same
polygon found inside one block has neither. :func:`drop_collinear` removes vertices that lie
on a straight edge (``rasterio.features.shapes`` never makes any, so only unions need it:
seam merges, hole filling across parts, un-filling) and :func:`shapely.normalize` fixes ring
start, orientation and order for every polygon; :func:`canonical_polygons` does both. Both
ways then come out identical, vertex for vertex.

:func:`first_pixel_keys` gives each polygon a sort key that no block layout changes: its
first pixel in row-major order. Polygons are simplified and written in that order.

Works on pixel coordinates, where every edge of a polygon straight from the raster is
horizontal or vertical.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["canonical_polygons", "drop_collinear", "first_pixel_keys"]


def drop_collinear(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    """``geoms`` without vertices whose neighbours lie on the same row or column (cyclically)."""
    if len(geoms) == 0:
        return geoms
    parts, part_owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring_idx[1:] != ring_idx[:-1], True]  # each ring repeats its first point last
    c, r = coords[~closing], ring_idx[~closing]
    n = len(c)
    starts = np.r_[0, np.flatnonzero(r[1:] != r[:-1]) + 1]
    lengths = np.diff(np.r_[starts, n])
    idx = np.arange(n)
    first = np.repeat(starts, lengths)
    last = first + np.repeat(lengths, lengths) - 1
    prev = np.where(idx == first, last, idx - 1)
    nxt = np.where(idx == last, first, idx + 1)
    x, y = c[:, 0], c[:, 1]
    straight = ((x[prev] == x) & (x == x[nxt])) | ((y[prev] == y) & (y == y[nxt]))
    if not straight.any():
        return geoms
    keep = ~straight
    kept_per_ring = np.bincount(r[keep], minlength=len(rings))
    if (kept_per_ring < 3).any():  # never happens for pixel polygons; leave such input alone
        return geoms
    kc, kr = c[keep], r[keep]
    ring_first = np.r_[0, np.flatnonzero(kr[1:] != kr[:-1]) + 1]
    out = np.insert(kc, np.r_[ring_first[1:], len(kc)], kc[ring_first], axis=0)  # close every ring again
    ring_off = np.r_[0, np.cumsum(kept_per_ring + 1)]
    part_off = np.r_[0, np.cumsum(np.bincount(ring_part, minlength=len(parts)))]
    new_parts = shapely.from_ragged_array(shapely.GeometryType.POLYGON, out, (ring_off, part_off))
    result = np.empty(len(geoms), dtype=object)
    multi = shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOLYGON
    single = ~multi[part_owner]
    result[part_owner[single]] = new_parts[single]
    if multi.any():
        owners = part_owner[~single]
        starts_of_owner = np.r_[True, owners[1:] != owners[:-1]]  # parts are grouped by owner
        result[owners[starts_of_owner]] = shapely.multipolygons(
            new_parts[~single], indices=np.cumsum(starts_of_owner) - 1
        )
    return result


def canonical_polygons(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    """``(n,)`` pixel polygons/multipolygons in canonical form: no vertex in the middle of a
    straight edge, rings normalised (:func:`shapely.normalize`). The point sets do not change."""
    if len(geoms) == 0:
        return geoms
    return np.asarray(shapely.normalize(drop_collinear(geoms)), dtype=object)


def first_pixel_keys(geoms: NDArray[np.object_], width: int) -> NDArray[np.int64]:
    """``(n,)`` row-major index (``row * width + col``) of each pixel polygon's first pixel.

    The first pixel lies in the polygon's top row, leftmost there: its top-left corner is the
    vertex with the smallest ``x`` among those with the smallest ``y``. Disjoint polygons have
    distinct keys.
    """
    n = len(geoms)
    if n == 0:
        return np.empty(0, np.int64)
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    top = np.full(n, np.inf)
    np.minimum.at(top, owner, coords[:, 1])
    at_top = coords[:, 1] == top[owner]
    left = np.full(n, np.inf)
    np.minimum.at(left, owner[at_top], coords[at_top, 0])
    return top.astype(np.int64) * np.int64(width) + left.astype(np.int64)
