"""Areas of interest (segnext_geo.raster.aoi) on scenes in UTM, Web Mercator and lon/lat.

Expected masks are computed independently of the code under test: every pixel's square is
taken into the area's CRS (the inverse direction), and shapely decides whether it overlaps the
area. Pixels within 1 % of a pixel of the area's boundary are ambiguous and not judged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Point, Polygon, box

from segnext_geo.errors import UserError
from segnext_geo.inference.grid import TileGrid
from segnext_geo.raster.aoi import AreaOfInterest, SceneArea, locate_aoi, parse_bbox, read_aoi

UTM32 = CRS.from_epsg(32632)
WGS84 = CRS.from_epsg(4326)
MERC = CRS.from_epsg(3857)


def expected(
    aoi: AreaOfInterest, crs: CRS, transform: Affine, shape: tuple[int, int], window: Window | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(surely_in, surely_out)`` ``(h, w)`` bool: pixel squares taken into the area's CRS, tested with shapely."""
    h, w = shape
    c0, r0 = (0, 0) if window is None else (int(window.col_off), int(window.row_off))
    rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w]
    tr = Transformer.from_crs(crs, aoi.crs, always_xy=True)
    corners = []
    for dr, dc in ((0, 0), (0, 1), (1, 1), (1, 0)):
        x, y = transform @ (cols + dc, rows + dr)
        corners.append(np.stack(tr.transform(x, y), axis=-1))
    rings = np.stack([*corners, corners[0]], axis=-2).reshape(-1, 5, 2)
    squares = shapely.polygons(rings)
    geom = aoi.geometry
    minx, miny, maxx, maxy = shapely.bounds(squares).T
    delta = 0.01 * float(np.median(np.maximum(maxx - minx, maxy - miny)))
    surely_in = shapely.intersects(squares, geom.buffer(-delta))
    surely_out = ~shapely.intersects(squares, geom.buffer(delta))
    return surely_in.reshape(h, w), surely_out.reshape(h, w)


def check_mask(mask: np.ndarray, surely_in: np.ndarray, surely_out: np.ndarray) -> None:
    assert mask[surely_in].all(), f"{int((~mask[surely_in]).sum())} pixels of the area are missing"
    assert not mask[surely_out].any(), f"{int(mask[surely_out].sum())} pixels outside the area are in"
    assert surely_in.any() and surely_out.any()
    ambiguous = ~(surely_in | surely_out)
    assert ambiguous.sum() < 0.05 * max(1, surely_in.sum())  # only a thin boundary is not judged


def bounding(mask: np.ndarray) -> Window:
    rows, cols = np.nonzero(mask)
    return Window(int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1))


# --- parsing --------------------------------------------------------------------------------


def test_parse_bbox() -> None:
    aoi = parse_bbox(" 9.1, 45 ,9.25,45.1")
    assert aoi.crs == WGS84 and aoi.geometry.equals(box(9.1, 45, 9.25, 45.1))
    assert aoi.label == "--bbox 9.1,45,9.25,45.1 (EPSG:4326)"
    assert parse_bbox("500000,6000000,500100,6000050", "EPSG:32632").crs == UTM32


@pytest.mark.parametrize(
    ("text", "crs", "message"),
    [
        ("1,2,3", "EPSG:4326", "--bbox: '1,2,3' is not four numbers MINX,MINY,MAXX,MAXY"),
        ("1,2,x,4", "EPSG:4326", "--bbox: '1,2,x,4' is not four numbers MINX,MINY,MAXX,MAXY"),
        ("1,2,nan,4", "EPSG:4326", "--bbox: '1,2,nan,4' is not four numbers MINX,MINY,MAXX,MAXY"),
        ("3,2,1,4", "EPSG:4326", "--bbox: '3,2,1,4': MINX must be below MAXX and MINY below MAXY"),
        (
            "1,2,3,95",
            "EPSG:4326",
            "--bbox: '1,2,3,95' is outside -180..180 (longitude), -90..90 (latitude) in EPSG:4326",
        ),
        ("1,2,3,4", "EPSG:999999", "--bbox-crs: 'EPSG:999999' is not a CRS (e.g. EPSG:4326)"),
    ],
)
def test_bad_bbox(text: str, crs: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        parse_bbox(text, crs)
    assert str(e.value) == message


# --- a bbox in the scene's CRS -------------------------------------------------------------------

T_UTM = from_origin(500_000.0, 6_000_000.0, 0.5, 0.5)  # UTM 32N, 0.5 m pixels


def test_bbox_in_scene_crs_is_exact() -> None:
    aoi = parse_bbox("500010,5999950,500030.5,5999990", "EPSG:32632")  # cols 20..61, rows 20..100
    area = locate_aoi(aoi, UTM32, T_UTM, 300, 200, "scene.tif")
    assert area.window == Window(20, 20, 41, 80)
    assert area.mask(area.window).all()
    full = area.mask(Window(0, 0, 300, 200))
    assert bounding(full) == area.window and full.sum() == 41 * 80


def test_bbox_straddling_the_scene_edge() -> None:
    # from 10 px left of the scene to 20.25 px in, rows 100.5 .. 250 (the scene has 200)
    aoi = parse_bbox("499995,5999875,500010.125,5999949.75", "EPSG:32632")
    area = locate_aoi(aoi, UTM32, T_UTM, 300, 200, "scene.tif")
    assert area.window == Window(0, 100, 21, 100)  # a partly covered pixel is in; clipped to the scene
    full = area.mask(Window(0, 0, 300, 200))
    assert bounding(full) == area.window and full[100:, :21].all() and full.sum() == 21 * 100


def test_area_that_misses() -> None:
    aoi = parse_bbox("10,50,10.1,50.1")  # 700 km away from the scene
    area = locate_aoi(aoi, UTM32, T_UTM, 300, 200, "scene.tif")
    assert area.misses and area.window is None
    assert not area.mask(Window(0, 0, 300, 200)).any()
    grid = TileGrid(200, 300, 64, 16, 256)
    assert not area.tiles_touching([t.rect for t in grid.tiles]).any()
    # an area that only shares the scene's edge misses it too (no pixel overlaps it)
    edge = parse_bbox("499990,5999900,500000,6000000", "EPSG:32632")
    assert locate_aoi(edge, UTM32, T_UTM, 300, 200, "scene.tif").misses


def test_scene_without_crs() -> None:
    with pytest.raises(UserError, match=r"^--bbox .*: plain.tif has no CRS"):
        locate_aoi(parse_bbox("1,2,3,4"), None, Affine.identity(), 10, 10, "plain.tif")


# --- reprojected areas -----------------------------------------------------------------------------


def test_lonlat_bbox_on_a_utm_scene_is_curved() -> None:
    """A 0.3° x 0.2° lon/lat box on a 60 m UTM 32N scene far east of the central meridian."""
    transform = from_origin(760_000.0, 5_010_000.0, 60.0, 60.0)  # around 12.4°E, 45.2°N
    aoi = parse_bbox("12.30,45.05,12.60,45.25")
    area = locate_aoi(aoi, UTM32, transform, 500, 500, "utm.tif")
    full = area.mask(Window(0, 0, 500, 500))
    check_mask(full, *expected(aoi, UTM32, transform, (500, 500)))
    assert bounding(full) == area.window
    # grid convergence rotates the box in UTM: the corners of its bounding window are outside it
    win = area.mask(area.window)
    assert win.all(axis=1).sum() < win.shape[0] and not (win[0, 0] and win[0, -1] and win[-1, 0] and win[-1, -1])


def test_lonlat_bbox_on_a_web_mercator_scene() -> None:
    transform = from_origin(1_000_000.0, 5_700_000.0, 50.0, 50.0)  # around 9°E, 45.5°N
    aoi = parse_bbox("9.05,45.40,9.25,45.55")
    area = locate_aoi(aoi, MERC, transform, 600, 600, "merc.tif")
    full = area.mask(Window(0, 0, 600, 600))
    check_mask(full, *expected(aoi, MERC, transform, (600, 600)))
    assert bounding(full) == area.window


def test_utm_bbox_on_a_lonlat_scene() -> None:
    transform = from_origin(9.0, 45.2, 0.0005, 0.0005)  # EPSG:4326, about 40 x 55 m pixels
    aoi = parse_bbox("505000,4990000,512000,4996000", "EPSG:32632")
    area = locate_aoi(aoi, WGS84, transform, 400, 400, "lonlat.tif")
    full = area.mask(Window(0, 0, 400, 400))
    check_mask(full, *expected(aoi, WGS84, transform, (400, 400)))
    assert bounding(full) == area.window


# --- AOI files ------------------------------------------------------------------------------------


@pytest.fixture
def donut(tmp_path: Path) -> Path:
    """A GeoPackage in Web Mercator: a square with a square hole, a second polygon, and a point."""
    to_merc = Transformer.from_crs(WGS84, MERC, always_xy=True)

    def merc(coords: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [to_merc.transform(x, y) for x, y in coords]

    outer = merc([(9.02, 45.02), (9.10, 45.02), (9.10, 45.08), (9.02, 45.08)])
    hole = merc([(9.05, 45.04), (9.07, 45.04), (9.07, 45.06), (9.05, 45.06)])
    other = merc([(9.12, 45.00), (9.14, 45.00), (9.13, 45.03)])
    gdf = gpd.GeoDataFrame(
        {"name": ["donut", "triangle", "well"]},
        geometry=[Polygon(outer, [hole]), Polygon(other), Point(merc([(9.0, 45.0)])[0])],
        crs=MERC,
    )
    path = tmp_path / "aoi.gpkg"
    gdf.to_file(path, layer="areas", engine="pyogrio")
    return path


def test_aoi_file_with_a_hole_in_another_crs(donut: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="segnext_geo"):
        aoi = read_aoi(donut)
    assert "ignored 1 feature(s) that are not polygons" in caplog.text
    assert aoi.crs == MERC and aoi.geometry.geom_type == "MultiPolygon" and aoi.label == f"--aoi {donut}"
    transform = from_origin(500_000.0, 4_990_000.0, 20.0, 20.0)  # UTM 32N around 9°E, 45°N
    area = locate_aoi(aoi, UTM32, transform, 800, 500, "utm.tif")
    full = area.mask(Window(0, 0, 800, 500))
    surely_in, surely_out = expected(aoi, UTM32, transform, (500, 800))
    check_mask(full, surely_in, surely_out)
    assert bounding(full) == area.window
    # the hole's centre, in pixels of the scene, is outside the area
    x, y = Transformer.from_crs(WGS84, UTM32, always_xy=True).transform(9.06, 45.05)
    col, row = ~transform @ (x, y)
    assert surely_out[int(row), int(col)] and not full[int(row), int(col)]


def test_aoi_file_errors(tmp_path: Path, donut: Path) -> None:
    with pytest.raises(UserError, match=r"^--aoi: .*missing.gpkg: no such file$"):
        read_aoi(tmp_path / "missing.gpkg")
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=WGS84).to_file(donut, layer="second", engine="pyogrio")
    with pytest.raises(UserError) as e:
        read_aoi(donut)
    assert str(e.value) == f"--aoi: {donut} has 2 layers (areas, second); choose one with --aoi-layer"
    assert read_aoi(donut, layer="second").geometry.equals(box(0, 0, 1, 1))
    with pytest.raises(UserError, match=r"^--aoi-layer: .* has no layer 'third'"):
        read_aoi(donut, layer="third")
    shp = tmp_path / "nocrs.shp"
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(shp, engine="pyogrio")
    with pytest.raises(UserError, match=r"nocrs.shp has no CRS"):
        read_aoi(shp)
    lines = tmp_path / "lines.geojson"
    gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=WGS84).to_file(lines, engine="pyogrio")
    with pytest.raises(UserError, match=r"lines.geojson has no polygons \(1 feature\(s\) without an area\)"):
        read_aoi(lines)
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a geopackage")
    with pytest.raises(UserError, match=r"^--aoi: .*junk.gpkg: not a vector file GDAL can read"):
        read_aoi(junk)


def test_self_intersecting_polygon_is_repaired(tmp_path: Path) -> None:
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    path = tmp_path / "bowtie.geojson"
    gpd.GeoDataFrame(geometry=[bowtie], crs=UTM32).to_file(path, engine="pyogrio")
    aoi = read_aoi(path)
    assert aoi.geometry.is_valid and aoi.geometry.area == pytest.approx(50.0)


# --- masks of windows and tiles ------------------------------------------------------------------


@pytest.fixture
def donut_area(donut: Path) -> SceneArea:
    transform = from_origin(500_000.0, 4_990_000.0, 20.0, 20.0)
    return locate_aoi(read_aoi(donut), UTM32, transform, 800, 500, "utm.tif")


def test_window_masks_are_crops_of_the_scene_mask(donut_area: SceneArea) -> None:
    full = donut_area.mask(Window(0, 0, 800, 500))
    rng = np.random.default_rng(0)
    for _ in range(40):
        r, c = int(rng.integers(0, 480)), int(rng.integers(0, 780))
        h, w = int(rng.integers(1, 500 - r)), int(rng.integers(1, 800 - c))
        assert (donut_area.mask(Window(c, r, w, h)) == full[r : r + h, c : c + w]).all()


def test_tiles_touching_agrees_with_the_mask(donut_area: SceneArea) -> None:
    grid = TileGrid(500, 800, 64, 16, 512)
    touching = donut_area.tiles_touching([t.rect for t in grid.tiles])
    has_pixels = np.array([donut_area.mask(t.rect.window()).any() for t in grid.tiles])
    assert (touching == has_pixels).all() and 0 < touching.sum() < len(grid.tiles)


def test_a_tile_sharing_only_an_edge_is_not_run() -> None:
    aoi = parse_bbox("500000,5999968,500032,6000000", "EPSG:32632")  # exactly pixels [0, 64) x [0, 64)
    area = locate_aoi(aoi, UTM32, T_UTM, 300, 200, "scene.tif")
    grid = TileGrid(200, 300, 64, 0, 256)
    touching = area.tiles_touching([t.rect for t in grid.tiles])
    assert [t.rect for t, hit in zip(grid.tiles, touching, strict=True) if hit] == [grid.tiles[0].rect]
