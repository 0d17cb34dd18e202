"""Areas of interest through predict_scene and the CLI: crop equality with a whole-scene run, other CRSs, errors.

Scenes are GeoTIFFs written here in UTM 32N; the model is a real SegNeXt-T (4 classes, seeded
weights) on 64-px tiles, so a pixel's value depends on which tiles cover it: a grid anchored
anywhere but the scene's would change the values inside the area.
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from pyproj import Transformer
from rasterio.transform import from_origin
from rasters import textured, write_tif
from segnext_geo.cli.app import main

from segnext_geo.errors import UserError
from segnext_geo.inference import AreaMissesScene, PredictOptions, Rect, TileGrid, predict_scene
from segnext_geo.models import build_model

UTM = "EPSG:32632"
ORIGIN = (600_000.0, 5_000_000.0)
RES = 10.0
H, W = 200, 262
GRID = {"tile_size": 64, "overlap": 16, "working_set": 150, "device": "cpu", "workers": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


@pytest.fixture(scope="module")
def segnext() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", 4, class_names=["background", "building", "road", "water"]).eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = textured((3, H, W), seed=3)
    img[:, 20:60, 30:70] = 0  # a nodata hole that the first area cuts through
    folder = tmp_path_factory.mktemp("scene")
    return write_tif(folder / "s.tif", img, crs=UTM, transform=from_origin(*ORIGIN, RES, RES), nodata=0)


@pytest.fixture(scope="module")
def full(scene: Path, segnext: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, ...]:
    """The whole-scene run: classes (H, W), probabilities (4, H, W) and the probability mask."""
    folder = tmp_path_factory.mktemp("full")
    r = predict_scene(
        scene, segnext, folder / "c.tif", PredictOptions(**GRID), probs_out=folder / "p.tif", progress=False
    )
    assert r.window is None
    with rasterio.open(folder / "c.tif") as c, rasterio.open(folder / "p.tif") as p:
        return c.read(1), p.read(), p.dataset_mask()


def _xy(col: float, row: float) -> tuple[float, float]:
    """Scene pixel coordinates -> UTM."""
    return ORIGIN[0] + col * RES, ORIGIN[1] - row * RES


def _run(scene: Path, model: torch.nn.Module, folder: Path, **area: object) -> tuple[object, ...]:
    opts = PredictOptions(**GRID, **area)  # type: ignore[arg-type]
    r = predict_scene(scene, model, folder / "c.tif", opts, probs_out=folder / "p.tif", progress=False)
    with rasterio.open(folder / "c.tif") as c, rasterio.open(folder / "p.tif") as p:
        return r, c.read(1), c.transform, c.crs, c.tags(), p.read(), p.dataset_mask()


@pytest.mark.parametrize(
    ("cols", "rows"),
    [
        ((41.3, 131.6), (37.5, 121.2)),  # inside, cutting the nodata hole and tile edges
        ((200.2, 262.0), (150.7, 200.0)),  # at the bottom-right corner: the pulled-back last tiles
    ],
)
def test_bbox_output_equals_the_whole_run_cropped(
    tmp_path: Path, scene: Path, segnext: torch.nn.Module, full: tuple[np.ndarray, ...], cols: tuple, rows: tuple
) -> None:
    (x0, y1), (x1, y0) = _xy(cols[0], rows[0]), _xy(cols[1], rows[1])
    r, classes, transform, crs, tags, probs, pmask = _run(scene, segnext, tmp_path, bbox=(x0, y0, x1, y1), bbox_crs=UTM)
    # the bounding window: the box's pixel bounds rounded outward, on the scene's own grid
    c0, r0 = int(np.floor(cols[0])), int(np.floor(rows[0]))
    c1, r1 = int(np.ceil(cols[1])), int(np.ceil(rows[1]))
    assert classes.shape == (r1 - r0, c1 - c0) and probs.shape == (4, r1 - r0, c1 - c0)
    assert transform == from_origin(*_xy(c0, r0), RES, RES) and crs == UTM
    assert tags["AREA_WINDOW"] == f"{c0},{r0},{c1 - c0},{r1 - r0}" and "--bbox" in tags["AREA_OF_INTEREST"]
    full_classes, full_probs, full_mask = full
    win = (slice(r0, r1), slice(c0, c1))
    # a box covers its whole bounding window: every value equals the whole-scene run's, byte for byte
    assert np.array_equal(classes, full_classes[win])
    assert np.array_equal(probs, full_probs[(slice(None), *win)])
    assert np.array_equal(pmask, full_mask[win])
    assert r.pixels == int((full_classes[win] != 255).sum())
    # only the tiles that touch the box ran: far fewer than the whole scene's 5 x 6
    assert 0 < r.tiles - r.skipped_tiles < 20


@pytest.mark.parametrize("region", [Rect(37, 41, 122, 132), Rect(150, 200, 200, 262), Rect(0, 0, 1, 1)])
def test_a_grid_cut_to_a_region_keeps_the_whole_scene_grid(region: Rect) -> None:
    whole = TileGrid(H, W, 64, 16, 150)
    cut = TileGrid(H, W, 64, 16, 150, region)
    by_place = {(t.row, t.col): t for t in whole.tiles}
    # every kept tile is the whole grid's tile (same origin, size, indices that pick its blend profile)
    for t in cut.tiles:
        w = by_place[(t.row, t.col)]
        assert (t.y, t.x, t.th, t.tw, t.rect) == (w.y, w.x, w.th, w.tw, w.rect)
    # and every whole-grid tile overlapping the region is kept
    overlapping = {k for k, t in by_place.items() if not t.rect.intersect(region).empty}
    assert {(t.row, t.col) for t in cut.tiles} == overlapping
    # the cores partition a rectangle that holds the region
    cov = cut.covered
    assert cov.intersect(region) == region
    assert sum(s.core.height * s.core.width for s in cut.supertiles) == cov.height * cov.width
    assert len(cut) < len(whole)


def test_aoi_polygon_in_another_crs_from_a_geopackage(
    tmp_path: Path, scene: Path, segnext: torch.nn.Module, full: tuple[np.ndarray, ...]
) -> None:
    # a triangle drawn in UTM pixel space, stored in lon/lat (EPSG:4326) in a GeoPackage
    tri_px = [(60.5, 40.2), (190.7, 70.9), (90.1, 170.4)]
    to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    tri_ll = shapely.Polygon([to_ll.transform(*_xy(c, r)) for c, r in tri_px])
    aoi = tmp_path / "area.gpkg"
    gpd.GeoDataFrame({"name": ["t"]}, geometry=[tri_ll], crs="EPSG:4326").to_file(aoi, layer="zones")
    _, classes, transform, _, _, probs, pmask = _run(scene, segnext, tmp_path, aoi=str(aoi))
    c0, r0 = int(transform.c - ORIGIN[0]) // 10, int(ORIGIN[1] - transform.f) // 10
    assert (c0, r0) == (60, 40) and classes.shape == (171 - 40, 191 - 60)
    full_classes, full_probs, _ = full
    win = full_classes[r0 : r0 + classes.shape[0], c0 : c0 + classes.shape[1]]
    inside = classes != 255
    # the triangle's interior is written (where the scene is valid), with the whole run's values
    assert inside.sum() > 0.4 * classes.size and np.array_equal(classes[inside], win[inside])
    assert np.array_equal(
        probs[:, inside], full_probs[:, r0 : r0 + classes.shape[0], c0 : c0 + classes.shape[1]][:, inside]
    )
    assert np.array_equal(pmask > 0, inside)
    # outside the triangle is nodata; well inside it, the whole run's values
    px = shapely.Polygon([(c - c0, r - r0) for c, r in tri_px])
    for rr, cc in [(0, 100), (120, 120), (125, 5)]:  # pixels whose squares the triangle does not reach
        assert not px.intersects(shapely.box(cc, rr, cc + 1, rr + 1)) and classes[rr, cc] == 255
    for rr, cc in [(30, 60), (60, 40), (50, 80)]:  # pixels well inside the triangle (and valid in the scene)
        assert px.contains(shapely.box(cc, rr, cc + 1, rr + 1)) and classes[rr, cc] == win[rr, cc] != 255


def test_bbox_in_lon_lat_is_placed_on_the_utm_grid(tmp_path: Path, scene: Path, segnext: torch.nn.Module) -> None:
    to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(*_xy(100, 150))
    lon1, lat1 = to_ll.transform(*_xy(180, 90))
    _, classes, transform, *_ = _run(scene, segnext, tmp_path, bbox=f"{lon0},{lat0},{lon1},{lat1}")
    c0, r0 = round((transform.c - ORIGIN[0]) / RES), round((ORIGIN[1] - transform.f) / RES)
    # a lon/lat box is a slightly rotated quadrilateral in UTM: its window holds the corners' pixels
    assert 95 <= c0 <= 100 and 85 <= r0 <= 90
    assert 180 <= c0 + classes.shape[1] <= 185 and 150 <= r0 + classes.shape[0] <= 155
    assert (classes != 255).sum() > 0.9 * 80 * 60


def test_an_area_that_misses_the_scene(tmp_path: Path, scene: Path, segnext: torch.nn.Module) -> None:
    with pytest.raises(AreaMissesScene, match=r"--bbox .*does not overlap .*s\.tif"):
        _run(scene, segnext, tmp_path, bbox=(0, 0, 1000, 1000), bbox_crs=UTM)
    assert not (tmp_path / "c.tif").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bbox": "1,2,3"}, "--bbox: '1,2,3' is not four numbers"),
        ({"bbox": "5,2,3,4"}, "--bbox: .*MINX must be below MAXX"),
        ({"bbox": "9,45,9.1,95"}, "--bbox: .*outside -180..180"),
        ({"bbox": "1,2,3,4", "bbox_crs": "EPSG:99999"}, "--bbox-crs: 'EPSG:99999' is not a CRS"),
        ({"bbox_crs": "EPSG:32632"}, "--bbox-crs: only applies with --bbox"),
        ({"bbox": "1,2,3,4", "aoi": "a.gpkg"}, "--bbox, --aoi: give one area of interest"),
        ({"aoi_layer": "x"}, "--aoi-layer: only applies with --aoi"),
        ({"asset": " "}, "--asset: ' ' is not an asset name"),
    ],
)
def test_bad_area_options_name_the_flag(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        PredictOptions(**kwargs)


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``segnext-geo ARGS`` in this process (the console entry point): exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["segnext-geo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_area_errors_are_one_line_exit_2(
    tmp_path: Path,
    scene: Path,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["predict", str(scene), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "c.tif"), "-q"]
    (tmp_path / "notes.txt").write_text("not a vector file\n")
    gpkg = tmp_path / "two.gpkg"
    poly = shapely.box(*_xy(10, 60), *_xy(60, 10))
    for layer in ("a", "b"):
        gpd.GeoDataFrame(geometry=[poly], crs=UTM).to_file(gpkg, layer=layer)
    cases = [
        (["--bbox", "1,2,x,4"], "--bbox: '1,2,x,4' is not four numbers"),
        (["--bbox", "1,2,3,4", "--aoi", str(gpkg)], "--bbox, --aoi"),
        (["--aoi", str(tmp_path / "missing.gpkg")], "--aoi: " + str(tmp_path / "missing.gpkg") + ": no such file"),
        (["--aoi", str(tmp_path / "notes.txt")], "--aoi: " + str(tmp_path / "notes.txt") + ": not a vector file"),
        (["--aoi", str(gpkg)], "has 2 layers (a, b); choose one with --aoi-layer"),
        (["--aoi", str(gpkg), "--aoi-layer", "c"], "--aoi-layer: " + str(gpkg) + " has no layer 'c'"),
        (["--bbox", "0,0,10,10", "--bbox-crs", UTM], "does not overlap " + str(scene)),
        (["--asset", "visual"], "--asset: only applies to a STAC Item; " + str(scene) + " is a raster"),
    ]
    for extra, message in cases:
        code, _, err = _main(monkeypatch, capsys, *base, *extra)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (extra, err)
        assert lines[0].startswith("error: ") and message in lines[0] and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "c.tif").exists()
    # batch shares the flags and their checks
    for extra, message in cases[:2]:
        code, _, err = _main(monkeypatch, capsys, "batch", str(scene), "-o", str(tmp_path / "b"), *extra)
        assert code == 2 and err.count("\n") == 1 and message in err, (extra, err)
    assert not (tmp_path / "b").exists()
    # a good --aoi with its layer works end to end through the CLI
    code, _, err = _main(
        monkeypatch, capsys, *base, "--aoi", str(gpkg), "--aoi-layer", "b", "--tile-size", "64", "--overlap", "16"
    )
    assert code == 0, err
    with rasterio.open(tmp_path / "c.tif") as src:
        assert (src.width, src.height) == (50, 50) and src.transform.c == _xy(10, 10)[0]
