"""Areas of interest: ``--bbox`` / ``--aoi`` -> a window, a validity mask and the tiles to run, on a scene's grid.

An :class:`AreaOfInterest` is a polygonal area in its own CRS: :func:`parse_bbox` (``--bbox
MINX,MINY,MAXX,MAXY`` in ``--bbox-crs``, EPSG:4326 by default, x before y: longitude first) or
:func:`read_aoi` (``--aoi FILE``: any vector file GDAL reads, any CRS, every polygon of the
layer unioned). :func:`locate_aoi` places it on one scene (CRS, transform, size) as a
:class:`SceneArea`, in the scene's pixel coordinates (``x`` = column, ``y`` = row, pixel
``(r, c)`` is the square ``[c, c+1] x [r, r+1]``).

Which pixels are in the area: every pixel the area overlaps, even partly (GDAL's
"all touched" rule; a pixel that only shares an edge or a corner with the area is not in it).
So the output covers every point of the area. The same rule gives the bounding ``window``
(the area's bounds rounded outward to whole pixels, clipped to the scene), the ``mask`` of any
window and the tiles to run (a tile runs when its rectangle overlaps the area), so the three
agree exactly.

Reprojection: the area is densified (64 points per edge of a bbox, 256 segments across a
file's extent) before its vertices are transformed with pyproj, so a lon/lat box becomes the
curved shape it is in UTM, not the box of its corners.

Developer note, for the predict pipeline: to get, inside the area, exactly the values of a
whole-scene run, keep the tile grid of the whole scene and skip only the tiles for which
:meth:`SceneArea.tiles_touching` is False: every pixel of the area is then blended from all
the tiles a whole-scene run uses (each of them overlaps the area). Write ``window`` of the
result, with pixels where ``mask(window)`` is False set to nodata. A scene the area misses
gives ``SceneArea.misses`` (not an error), so ``batch`` can record it and go on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from ..errors import UserError

__all__ = ["AreaOfInterest", "PixelRect", "SceneArea", "locate_aoi", "parse_bbox", "read_aoi"]

log = logging.getLogger("segnext_geo.raster")

#: Points per edge when a bbox is densified before reprojection.
BBOX_DENSIFY = 64
#: Segments across a file's extent when its polygons are densified before reprojection.
FILE_DENSIFY = 256


class PixelRect(Protocol):
    """A half-open pixel rectangle ``[y0, y1) x [x0, x1)`` in scene coordinates (the grid's ``Rect``)."""

    @property
    def y0(self) -> int: ...
    @property
    def x0(self) -> int: ...
    @property
    def y1(self) -> int: ...
    @property
    def x1(self) -> int: ...


@dataclass(frozen=True)
class AreaOfInterest:
    """A polygonal area: ``geometry`` (Polygon or MultiPolygon, non-empty, valid) in ``crs``.

    ``label`` names it in messages: ``"--bbox 9.1,45,9.2,45.1 (EPSG:4326)"`` or ``"--aoi FILE"``.
    ``densify`` is the longest segment (in ``crs`` units) its edges are cut into before they are
    reprojected: a 64th of a bbox's longer side, a 256th of a file's extent.
    """

    geometry: BaseGeometry
    crs: CRS
    label: str
    densify: float


def parse_bbox(text: str, crs: str | CRS = "EPSG:4326") -> AreaOfInterest:
    """``"MINX,MINY,MAXX,MAXY"`` in ``crs`` -> an :class:`AreaOfInterest` (a rectangle).

    In a geographic CRS the order is longitude, latitude (x before y), whatever the CRS's axis
    order.

    Raises:
        UserError: not four numbers, min not below max, latitudes or longitudes out of range,
            or ``crs`` not a CRS (the message names ``--bbox`` or ``--bbox-crs``).
    """
    the_crs = _parse_crs(crs, "--bbox-crs")
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UserError(f"--bbox: {text!r} is not four numbers MINX,MINY,MAXX,MAXY")
    minx, miny, maxx, maxy = values
    if minx >= maxx or miny >= maxy:
        raise UserError(f"--bbox: {text!r}: MINX must be below MAXX and MINY below MAXY")
    if the_crs.is_geographic and (minx < -180 or maxx > 180 or miny < -90 or maxy > 90):
        raise UserError(
            f"--bbox: {text!r} is outside -180..180 (longitude), -90..90 (latitude) in {_crs_name(the_crs)}"
        )
    label = f"--bbox {','.join(_num(v) for v in values)} ({_crs_name(the_crs)})"
    step = max(maxx - minx, maxy - miny) / BBOX_DENSIFY
    return AreaOfInterest(shapely.box(minx, miny, maxx, maxy), the_crs, label, step)


def read_aoi(path: str | Path, layer: str | None = None) -> AreaOfInterest:
    """The union of the polygons of a vector file (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, ...).

    Points and lines are ignored (with a warning); invalid polygons are repaired with
    ``make_valid``.

    Args:
        path: any vector file GDAL reads.
        layer: the layer to read; needed when the file has more than one.

    Raises:
        UserError: missing or unreadable file, several layers and no ``layer``, no CRS, or no
            polygon with an area.
    """
    p = str(path)
    label = f"--aoi {p}"
    if "://" not in p and not p.startswith("/vsi") and not Path(p).exists():
        raise UserError(f"--aoi: {p}: no such file")
    if "://" not in p and not p.startswith("/vsi") and Path(p).is_file() and Path(p).stat().st_size == 0:
        raise UserError(f"--aoi: {p}: is empty (0 bytes)")
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(p)]
        if layer is None and len(layers) > 1:
            raise UserError(f"--aoi: {p} has {len(layers)} layers ({', '.join(layers)}); choose one with --aoi-layer")
        if layer is not None and layer not in layers:
            raise UserError(f"--aoi-layer: {p} has no layer {layer!r} (it has {', '.join(layers)})")
        df = pyogrio.read_dataframe(p, layer=layer, columns=[])
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as e:
        raise UserError(f"--aoi: {p}: not a vector file GDAL can read ({_one_line(e)})") from None
    if df.crs is None:
        raise UserError(f"--aoi: {p} has no CRS; give it one (e.g. ogr2ogr -a_srs EPSG:4326)")
    geoms = [g for g in np.asarray(df.geometry.values) if g is not None and not g.is_empty]
    polygons = [_polygonal(shapely.make_valid(g)) for g in geoms]
    dropped = sum(1 for g in polygons if g is None)
    kept = [g for g in polygons if g is not None]
    if not kept:
        raise UserError(f"--aoi: {p} has no polygons ({len(geoms)} feature(s) without an area)")
    if dropped:
        log.warning("--aoi: %s: ignored %d feature(s) that are not polygons", p, dropped)
    area = _polygonal(shapely.union_all(kept))
    if area is None:
        raise UserError(f"--aoi: {p}: its polygons have no area")
    minx, miny, maxx, maxy = shapely.bounds(area)
    return AreaOfInterest(area, CRS.from_user_input(df.crs), label, max(maxx - minx, maxy - miny) / FILE_DENSIFY)


@dataclass(frozen=True)
class SceneArea:
    """An area of interest placed on one scene, in the scene's pixel coordinates.

    Attributes:
        label: the area's label (for messages and the manifest).
        width, height: the scene size in px.
        geometry: the area in pixel coordinates (x = column, y = row), clipped to the scene.
        window: the bounding pixel window of the area on the scene's grid (whole pixels,
            inside the scene), or ``None`` when the area misses the scene.
    """

    label: str
    width: int
    height: int
    geometry: BaseGeometry
    window: Window | None

    @property
    def misses(self) -> bool:
        """Whether the area does not overlap the scene (nothing to predict)."""
        return self.window is None

    def mask(self, window: Window) -> np.ndarray:
        """The pixels of ``window`` that are in the area.

        Args:
            window: an integer pixel window of the scene (may extend past the area).

        Returns:
            ``(h, w)`` bool, True inside the area (pixels the area overlaps).
        """
        col, row = int(window.col_off), int(window.row_off)
        h, w = int(window.height), int(window.width)
        edges = shapely.box(col, row, col + w, row + h)
        if self.window is None or not shapely.intersects(self.geometry, edges):
            return np.zeros((h, w), dtype=bool)
        if shapely.contains(self.geometry, edges):
            return np.ones((h, w), dtype=bool)
        part = shapely.clip_by_rect(self.geometry, col - 1, row - 1, col + w + 1, row + h + 1)
        local = shapely.transform(part, lambda xy: xy - np.array([col, row], dtype=np.float64))
        out = rasterize([(local, 1)], out_shape=(h, w), transform=Affine.identity(), all_touched=True, dtype="uint8")
        return out.astype(bool)

    def tiles_touching(self, rects: Sequence[PixelRect]) -> np.ndarray:
        """Which tiles overlap the area (and must be read and run).

        Args:
            rects: tile rectangles in scene pixels (the tile grid's ``Tile.rect``).

        Returns:
            ``(N,)`` bool, True where the rectangle's interior meets the area's interior (a
            tile that only touches the area along an edge is not run: none of its pixels is in it).
        """
        if self.window is None or not rects:
            return np.zeros(len(rects), dtype=bool)
        boxes = shapely.box(
            np.array([r.x0 for r in rects]),
            np.array([r.y0 for r in rects]),
            np.array([r.x1 for r in rects]),
            np.array([r.y1 for r in rects]),
        )
        shapely.prepare(self.geometry)
        hit = shapely.intersects(self.geometry, boxes)
        if hit.any():
            hit[hit] = shapely.relate_pattern(boxes[hit], self.geometry, "T********")
        return np.asarray(hit, dtype=bool)


def locate_aoi(
    aoi: AreaOfInterest, crs: CRS | None, transform: Affine, width: int, height: int, scene: str
) -> SceneArea:
    """Place ``aoi`` on a scene: its pixel geometry and bounding window.

    Args:
        aoi: the area.
        crs, transform, width, height: the scene's grid (``SceneInfo`` fields).
        scene: how messages name the scene.

    Returns:
        A :class:`SceneArea`; ``window`` is ``None`` when the area misses the scene.

    Raises:
        UserError: the scene has no CRS, or the area cannot be transformed into it.
    """
    if crs is None:
        raise UserError(f"{aoi.label}: {scene} has no CRS, so an area of interest cannot be placed on it")
    geom = aoi.geometry
    if CRS.from_user_input(crs) != aoi.crs:
        geom = _reproject(geom, aoi, crs, scene)
    inverse = ~transform
    pixels = shapely.transform(geom, lambda xy: np.column_stack(inverse @ (xy[:, 0], xy[:, 1])))
    pixels = _polygonal(shapely.make_valid(shapely.clip_by_rect(pixels, 0, 0, width, height)))
    if pixels is None:
        return SceneArea(aoi.label, width, height, shapely.Polygon(), None)
    minx, miny, maxx, maxy = shapely.bounds(pixels)
    c0, r0 = max(0, math.floor(minx)), max(0, math.floor(miny))
    c1, r1 = min(width, math.ceil(maxx)), min(height, math.ceil(maxy))
    return SceneArea(aoi.label, width, height, pixels, Window(c0, r0, c1 - c0, r1 - r0))


def _reproject(geom: BaseGeometry, aoi: AreaOfInterest, crs: CRS, scene: str) -> BaseGeometry:
    """``geom`` densified in ``aoi.crs`` and transformed vertex by vertex into ``crs``."""
    dense = shapely.segmentize(geom, aoi.densify) if aoi.densify > 0 else geom
    try:
        tr = Transformer.from_crs(aoi.crs, CRS.from_user_input(crs), always_xy=True)
        out = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1], errcheck=True)))
    except ProjError as e:
        raise UserError(f"{aoi.label}: cannot transform it into the CRS of {scene} ({_one_line(e)})") from None
    coords = shapely.get_coordinates(out)
    if not np.isfinite(coords).all():
        raise UserError(f"{aoi.label}: cannot transform it into the CRS of {scene} (it leaves that CRS's area)")
    valid = _polygonal(shapely.make_valid(out))
    return valid if valid is not None else shapely.Polygon()


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """The polygonal part of ``geom`` (a Polygon or MultiPolygon with an area), or ``None``."""
    if geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom if geom.area > 0 else None
    if geom.geom_type == "GeometryCollection":
        parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0]
        return shapely.union_all(parts) if parts else None
    return None


def _parse_crs(value: str | CRS, option: str) -> CRS:
    if isinstance(value, CRS):
        return value
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise UserError(f"{option}: {value!r} is not a CRS (e.g. EPSG:4326)") from None


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_string()


def _num(v: float) -> str:
    return repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:240] or type(e).__name__
