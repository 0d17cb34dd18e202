"""Node a set of pixel polygons: put a vertex wherever another polygon's vertex lies on an edge.

Polygons from a class raster have vertices only where their own outline turns. Where a
straight edge of one polygon meets two neighbours (a T-junction), the neighbours have a vertex
there and it does not, so the shared boundary is not made of identical segments on both sides,
and :func:`shapely.coverage_simplify` treats such edges as unshared (gaps and overlaps after
simplification). Inserting exactly those vertices makes the set a valid coverage while adding
far fewer vertices than densifying every edge to one vertex per pixel.

Works on pixel coordinates (non-negative integers, as :mod:`.polygonize` makes them); every
edge of such polygons is horizontal or vertical.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["node_pixel_polygons"]

_SHIFT = np.int64(1 << 32)


def _sorted_unique(keys: NDArray[np.int64]) -> NDArray[np.int64]:
    """Sorted distinct keys (a sort beats ``np.unique``'s hashing on millions of int64)."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))]


def _inserts(
    keys: NDArray[np.int64], major: NDArray[np.int64], lo: NDArray[np.int64], hi: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """For segments on line ``major`` from ``lo`` to ``hi`` (exclusive), the range of sorted
    ``keys`` (``major << 32 | minor``) strictly inside: ``(first, count)``."""
    first = np.searchsorted(keys, major * _SHIFT + lo + 1)
    last = np.searchsorted(keys, major * _SHIFT + hi)
    return first, np.maximum(last - first, 0)


def node_pixel_polygons(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    """``geoms`` (polygons or multipolygons, pixel coordinates) with T-junction vertices added.

    The point sets do not change; only vertices lying on another polygon's edge are inserted.
    """
    if len(geoms) == 0:
        return geoms
    parts, part_owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    xy = coords.astype(np.int64)
    x, y = xy[:, 0], xy[:, 1]
    by_row = _sorted_unique(y * _SHIFT + x)  # every vertex, keyed for lookups along a row ...
    by_col = _sorted_unique(x * _SHIFT + y)  # ... and along a column

    n = len(xy)
    edge = np.zeros(n, bool)
    edge[:-1] = ring_idx[:-1] == ring_idx[1:]  # coordinate j starts an edge to j + 1
    j = np.flatnonzero(edge)
    x0, y0, x1, y1 = x[j], y[j], x[j + 1], y[j + 1]
    horizontal = y0 == y1
    first = np.zeros(len(j), np.int64)
    count = np.zeros(len(j), np.int64)
    h, v = np.flatnonzero(horizontal), np.flatnonzero(~horizontal)
    first[h], count[h] = _inserts(by_row, y0[h], np.minimum(x0[h], x1[h]), np.maximum(x0[h], x1[h]))
    first[v], count[v] = _inserts(by_col, x0[v], np.minimum(y0[v], y1[v]), np.maximum(y0[v], y1[v]))
    if not count.any():
        return geoms

    # output: each coordinate, followed by the points inserted on the edge it starts
    k = np.zeros(n, np.int64)
    k[j] = count
    start = np.arange(n) + np.concatenate(([0], np.cumsum(k)[:-1]))
    out = np.empty((n + int(k.sum()), 2), np.float64)
    out[start] = coords
    has = np.flatnonzero(count)
    reps = count[has]
    t = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)  # 0..count-1 per edge
    horiz = np.repeat(horizontal[has], reps)
    ascending = np.repeat(np.where(horizontal[has], x1[has] > x0[has], y1[has] > y0[has]), reps)
    lo = np.repeat(first[has], reps)
    src = np.where(ascending, lo + t, lo + np.repeat(reps, reps) - 1 - t)  # walk along the edge's direction
    major = np.repeat(np.where(horizontal[has], y0[has], x0[has]), reps)
    minor = np.where(horiz, by_row[src], by_col[src]) - major * _SHIFT
    slots = np.repeat(start[j[has]] + 1, reps) + t
    out[slots, 0] = np.where(horiz, minor, major)
    out[slots, 1] = np.where(horiz, major, minor)

    ring_len = np.bincount(ring_idx, minlength=len(rings)) + np.bincount(ring_idx, weights=k, minlength=len(rings))
    ring_off = np.concatenate(([0], np.cumsum(ring_len.astype(np.int64))))
    part_off = np.concatenate(([0], np.cumsum(np.bincount(ring_part, minlength=len(parts)))))
    new_parts = shapely.from_ragged_array(shapely.GeometryType.POLYGON, out, (ring_off, part_off))

    result = np.empty(len(geoms), dtype=object)
    multi = shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOLYGON
    single_part = ~multi[part_owner]
    result[part_owner[single_part]] = new_parts[single_part]
    if multi.any():
        owners = part_owner[~single_part]
        first_of_owner = np.concatenate(([True], owners[1:] != owners[:-1]))  # parts are grouped by owner
        compact = np.cumsum(first_of_owner) - 1
        result[owners[first_of_owner]] = shapely.multipolygons(new_parts[~single_part], indices=compact)
    return result
