"""The tile grid and its super-tiles.

Tiles: ``tile`` px squares (a multiple of 32) every ``tile - overlap`` px; the last row and
column are pulled back to end exactly at the scene edge, so every pixel is covered and no tile
reads outside the scene. On an axis shorter than a tile there is one tile of the axis length
rounded up to 32 (the reader reflect-pads it; the padding is never stitched).

Super-tiles bound the working set. Consecutive tile rows (and columns) are grouped so that a
group spans at most ``working_set`` px. Super-tile ``(i, j)`` owns a *core*: the rectangle from
its first tile's origin to the next group's first tile's origin (the scene edge for the last
group). Cores partition the scene. Tiles never reach left of or above their own core, so the
core of a super-tile is complete once it and the super-tiles before it (raster order) have run;
what its tiles add beyond the core (one overlap wide, right and below) is handed on as a
partial sum to the super-tiles whose cores it falls in.

A ``region`` (an area of interest's window) keeps the grid of the whole scene -- the same tile
origins, blend windows and super-tile grouping rules -- but only the tile rows and columns that
overlap the region: every pixel of the region is then covered by exactly the tiles that cover
it in a whole-scene run, so its blended value is the same. ``Tile.row``/``Tile.col`` stay the
indices in the whole scene's grid (they pick the blend profiles); cores then partition the
rectangle from the first kept tile's origin to the next, unkept tile's origin, which holds the
region (pixels of it outside the region lack some tiles and are not written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window

__all__ = ["Rect", "SuperTile", "Tile", "TileGrid", "axis_starts", "group_axis", "round_tile_size"]

MIN_TILE = 64


def _kept(starts: list[int], tile: int, span: tuple[int, int] | None) -> slice:
    """The indices of the tiles along one axis that overlap ``[span[0], span[1])`` (all without a span)."""
    if span is None:
        return slice(0, len(starts))
    lo, hi = span
    kept = [i for i, s in enumerate(starts) if s < hi and s + tile > lo]
    if not kept:
        raise ValueError(f"no tile overlaps {lo}..{hi}")
    return slice(kept[0], kept[-1] + 1)


def round_tile_size(size: int) -> int:
    """Round to the nearest multiple of 32 (ties up); never below 32."""
    return max(32, (int(size) + 16) // 32 * 32)


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every ``tile - overlap`` px, the last pulled back to end at ``length``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(n)]


def group_axis(starts: list[int], tile: int, span: int) -> list[tuple[int, int]]:
    """Split tile indices into consecutive groups ``[a, b)`` whose tiles span at most ``span`` px (>= 1 tile)."""
    groups: list[tuple[int, int]] = []
    a = 0
    while a < len(starts):
        b = a + 1
        while b < len(starts) and starts[b] + tile - starts[a] <= span:
            b += 1
        groups.append((a, b))
        a = b
    return groups


@dataclass(frozen=True)
class Rect:
    """Half-open pixel rectangle ``[y0, y1) x [x0, x1)`` in scene coordinates."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def empty(self) -> bool:
        return self.y1 <= self.y0 or self.x1 <= self.x0

    def intersect(self, other: Rect) -> Rect:
        return Rect(max(self.y0, other.y0), max(self.x0, other.x0), min(self.y1, other.y1), min(self.x1, other.x1))

    def window(self) -> Window:
        return Window(self.x0, self.y0, self.width, self.height)


@dataclass(frozen=True)
class Tile:
    """One model input: origin ``(y, x)``, model size ``(th, tw)``; ``rect`` is its part inside the scene."""

    index: int
    row: int
    col: int
    y: int
    x: int
    th: int
    tw: int
    rect: Rect
    supertile: int


@dataclass(frozen=True)
class SuperTile:
    """A group of tiles processed together: ``core`` is written when done; ``extent`` holds its tiles."""

    index: int
    grow: int
    gcol: int
    core: Rect
    extent: Rect
    tiles: range


class TileGrid:
    """Tiles and super-tiles of a ``height`` x ``width`` scene, in processing order.

    Args:
        height, width: scene size in px.
        tile_size: tile side in px (already a multiple of 32).
        overlap: px shared by neighbouring tiles (``0 <= overlap <= tile_size // 2``).
        working_set: the largest super-tile side in px (a group always holds at least one tile).
        region: keep only the tile rows and columns that overlap this rectangle (see the module
            docstring); ``None``: the whole scene.
    """

    def __init__(
        self, height: int, width: int, tile_size: int, overlap: int, working_set: int, region: Rect | None = None
    ) -> None:
        self.height, self.width = int(height), int(width)
        self.tile_size, self.overlap = int(tile_size), int(overlap)
        self.working_set = int(working_set)
        self.th = min(self.tile_size, 32 * math.ceil(self.height / 32))
        self.tw = min(self.tile_size, 32 * math.ceil(self.width / 32))
        self.ys = axis_starts(self.height, self.th, self.overlap)
        self.xs = axis_starts(self.width, self.tw, self.overlap)
        self.region = region
        rows = _kept(self.ys, self.th, None if region is None else (region.y0, region.y1))
        cols = _kept(self.xs, self.tw, None if region is None else (region.x0, region.x1))
        self.row_groups = [(a + rows.start, b + rows.start) for a, b in group_axis(self.ys[rows], self.th, working_set)]
        self.col_groups = [(a + cols.start, b + cols.start) for a, b in group_axis(self.xs[cols], self.tw, working_set)]
        self.supertiles: list[SuperTile] = []
        self.tiles: list[Tile] = []
        for gi, (ra, rb) in enumerate(self.row_groups):
            cy0 = self.ys[ra]
            cy1 = self.ys[rb] if rb < len(self.ys) else self.height
            ey1 = min(self.ys[rb - 1] + self.th, self.height)
            for gj, (ca, cb) in enumerate(self.col_groups):
                cx0 = self.xs[ca]
                cx1 = self.xs[cb] if cb < len(self.xs) else self.width
                ex1 = min(self.xs[cb - 1] + self.tw, self.width)
                first = len(self.tiles)
                for r in range(ra, rb):
                    for c in range(ca, cb):
                        y, x = self.ys[r], self.xs[c]
                        rect = Rect(y, x, min(y + self.th, self.height), min(x + self.tw, self.width))
                        st = len(self.supertiles)
                        self.tiles.append(Tile(len(self.tiles), r, c, y, x, self.th, self.tw, rect, st))
                self.supertiles.append(
                    SuperTile(
                        len(self.supertiles),
                        gi,
                        gj,
                        core=Rect(cy0, cx0, cy1, cx1),
                        extent=Rect(cy0, cx0, ey1, ex1),
                        tiles=range(first, len(self.tiles)),
                    )
                )

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def covered(self) -> Rect:
        """The rectangle the cores partition: the whole scene, or the kept rows and columns' cores."""
        first, last = self.supertiles[0].core, self.supertiles[-1].core
        return Rect(first.y0, first.x0, last.y1, last.x1)

    @property
    def max_extent(self) -> tuple[int, int]:
        """The largest super-tile extent ``(h, w)`` in px (sizes the accumulators)."""
        return max(s.extent.height for s in self.supertiles), max(s.extent.width for s in self.supertiles)
