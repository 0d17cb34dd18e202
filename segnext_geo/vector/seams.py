"""Exact merging of polygons cut by block seams: union-find over seam pixels, then a union.

Blocks arrive in row-major order. Each open polygon (one that reaches a seam) gets a global
id; the seam pixels of a block are compared with those of the blocks above and to the left:

- 4-connectivity: a pixel joins the pixel across the seam when both hold the same class;
- 8-connectivity: also the two diagonal neighbours across the seam, which covers pixels that
  touch only at a block corner (the top row of a block is compared with the full bottom row
  of the block row above, so the corner pixels of the neighbouring blocks are included).

Joined polygons are united in a union-find forest. A group is *closed* once every block that
could still touch one of its members has been merged (the members' ``required`` indices); its
members are then united with :func:`shapely.union_all`, which is exact here because all
coordinates are integers and shared seam edges coincide. Only the open polygons near the
current block row are held, so memory follows the block size and the polygons still open.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import shapely
from numpy.typing import NDArray

from .canonical import drop_collinear
from .noding import node_pixel_polygons
from .parts import Parts

if TYPE_CHECKING:
    from .polygonize import BlockGrid, BlockResult

__all__ = ["Group", "SeamStitcher", "unite"]


@dataclass
class _Part:
    geom: object
    class_id: int
    pixels: int
    key: int
    conf_sum: int


@dataclass
class Group:
    """The pieces of one polygon that crossed seams, complete but not yet united (pixel space).

    ``key`` is the polygon's first pixel (the smallest of its pieces'); ``conf_sum`` the exact
    sum of its pieces' (-1 if one is unknown).
    """

    geoms: list[object] = field(default_factory=list)
    class_id: int = 0
    pixels: int = 0
    key: int = 0
    conf_sum: int = 0


def _union(pieces: list[object]) -> object:
    """Exact union of pixel-aligned pieces that meet only along seams (or at corners).

    Once T-junctions are noded the pieces form a valid coverage, and a coverage union (which
    only drops shared edges) is about twice as fast as an overlay union; the overlay union stays
    as a fallback should GEOS still refuse the input.
    """
    arr = np.array(pieces, dtype=object)
    try:
        return shapely.coverage_union_all(node_pixel_polygons(arr))
    except shapely.errors.GEOSException:
        return shapely.union_all(arr)


def unite(groups: Sequence[Group], with_conf: bool) -> Parts:
    """One polygon per group: the union of its pieces (exact: integer coordinates, coincident seams)."""
    geoms = np.array([g.geoms[0] if len(g.geoms) == 1 else _union(g.geoms) for g in groups], dtype=object)
    merged = np.array([len(g.geoms) > 1 for g in groups], bool)
    if merged.any():  # a union keeps a vertex wherever a seam crossed a straight edge
        geoms[merged] = drop_collinear(geoms[merged])
    return Parts(
        geoms=geoms,
        class_id=np.array([g.class_id for g in groups], np.int32),
        pixels=np.array([g.pixels for g in groups], np.int64),
        key=np.array([g.key for g in groups], np.int64),
        conf_sum=np.array([g.conf_sum for g in groups], np.int64) if with_conf else None,
    )


class SeamStitcher:
    """Merges the open polygons of blocks fed in row-major order.

    Args:
        grid: the block grid.
        connectivity: 4 or 8, as given to ``shapes``.
        with_conf: parts carry confidence sums.
    """

    def __init__(self, grid: BlockGrid, connectivity: int, with_conf: bool) -> None:
        self.grid = grid
        self.connectivity = connectivity
        self.with_conf = with_conf
        self._parts: dict[int, _Part] = {}
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}
        self._required: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []
        self._next_id = 0
        self._last = -1
        self._bottom_prev = np.full(grid.width, -1, np.int64)  # bottom row of block row i-1
        self._bottom_cur = np.full(grid.width, -1, np.int64)  # bottom row of block row i
        self._right_prev: NDArray[np.int64] | None = None  # right column of block (i, j-1)

    @property
    def n_open(self) -> int:
        """Open polygons currently held."""
        return len(self._parts)

    # -- union-find --------------------------------------------------------------------------
    def _find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self._members[ra]) < len(self._members[rb]):
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._members[ra].extend(self._members.pop(rb))
        req = max(self._required[ra], self._required.pop(rb))
        self._required[ra] = req
        heapq.heappush(self._heap, (req, ra))

    def _link(self, here: NDArray[np.int64], there: NDArray[np.int64]) -> None:
        """Union the polygons of pixel pairs ``here[k]``/``there[k]`` that hold the same class."""
        ok = (here >= 0) & (there >= 0)
        if not ok.any():
            return
        pairs = np.unique(np.stack([here[ok], there[ok]], axis=1), axis=0)
        parts = self._parts
        for a, b in pairs.tolist():
            if parts[a].class_id == parts[b].class_id:
                self._union(a, b)

    def _link_lines(self, here: NDArray[np.int64], there: NDArray[np.int64], offset: int) -> None:
        """Link a block edge ``here`` with the line across the seam (``there[offset + k]`` faces ``here[k]``)."""
        n = len(here)
        self._link(here, there[offset : offset + n])
        if self.connectivity == 8:
            lo = max(offset - 1, 0)  # diagonal: here[k] with there[offset + k - 1]
            self._link(here[lo - (offset - 1) :], there[lo : offset - 1 + n])
            hi = min(offset + 1 + n, len(there))  # diagonal: here[k] with there[offset + k + 1]
            self._link(here[: hi - offset - 1], there[offset + 1 : hi])

    # -- blocks ------------------------------------------------------------------------------
    def add(self, res: BlockResult) -> list[Group]:
        """Merge one block's open polygons; return the groups this block completed.

        Each :class:`Group` holds the pieces of one complete polygon (pixel space) with the
        class, pixel count and confidence sum of all of them; :func:`unite` makes the polygon.
        """
        grid = self.grid
        k = grid.index(res.i, res.j)
        if k != self._last + 1:
            raise RuntimeError(f"vectorize: block {k} arrived after block {self._last} (internal error)")
        self._last = k
        if res.j == 0 and res.i > 0:
            self._bottom_prev, self._bottom_cur = self._bottom_cur, self._bottom_prev
            self._bottom_cur.fill(-1)
            self._right_prev = None

        n = len(res.open)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        conf = res.open.conf_sum
        for t, gid in enumerate(ids.tolist()):
            self._parts[gid] = _Part(
                res.open.geoms[t],
                int(res.open.class_id[t]),
                int(res.open.pixels[t]),
                int(res.open.key[t]),
                int(conf[t]) if conf is not None else 0,
            )
            self._parent[gid] = gid
            self._members[gid] = [gid]
            self._required[gid] = int(res.required[t])
            heapq.heappush(self._heap, (int(res.required[t]), gid))

        def to_global(local: NDArray[np.int64] | None) -> NDArray[np.int64] | None:
            if local is None:
                return None
            return np.where(local >= 0, ids[np.maximum(local, 0)] if n else -1, -1)

        top, bottom, left, right = (to_global(x) for x in (res.top, res.bottom, res.left, res.right))
        c0 = res.j * grid.size
        if top is not None:
            self._link_lines(top, self._bottom_prev, c0)
        if left is not None and self._right_prev is not None:
            self._link_lines(left, self._right_prev, 0)
        if bottom is not None:
            self._bottom_cur[c0 : c0 + len(bottom)] = bottom
        self._right_prev = right
        return self._close(k)

    def _close(self, k: int) -> list[Group]:
        closed: list[Group] = []
        heap = self._heap
        while heap and heap[0][0] <= k:
            req, root = heapq.heappop(heap)
            if self._parent.get(root) != root or self._required.get(root) != req:
                continue  # stale entry: merged into another group, or its requirement grew
            closed.append(self._merge(root))
        return closed

    def _merge(self, root: int) -> Group:
        members = sorted(self._members.pop(root))  # piece order does not depend on union history
        del self._required[root]
        pieces = [self._parts.pop(m) for m in members]
        for m in members:
            del self._parent[m]
        return Group(
            geoms=[p.geom for p in pieces],
            class_id=pieces[0].class_id,
            pixels=sum(p.pixels for p in pieces),
            key=min(p.key for p in pieces),
            conf_sum=-1 if any(p.conf_sum < 0 for p in pieces) else sum(p.conf_sum for p in pieces),
        )

    def finish(self) -> list[Group]:
        """Close every group still open (none remain once the last block was added)."""
        closed = self._close(len(self.grid))
        for root in [r for r, p in self._parent.items() if p == r]:
            closed.append(self._merge(root))
        return closed
