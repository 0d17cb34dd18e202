"""Ground sample distance (segnext_geo.raster.gsd): scene GSD, the --gsd decision, resampling between grids."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasters import write_tif

from segnext_geo.errors import UserError
from segnext_geo.raster.gsd import (
    MAX_UPSAMPLE,
    GroundSampling,
    ResampleGrid,
    axis_taps,
    parse_gsd,
    plan_gsd,
    raster_gsd,
    scene_gsd,
)

A = 6378137.0  # WGS 84 semi-major axis
E2 = 0.00669437999014  # WGS 84 first eccentricity squared


def meridian_radius(lat: float) -> float:
    return A * (1 - E2) / (1 - E2 * math.sin(lat) ** 2) ** 1.5


def normal_radius(lat: float) -> float:
    return A / math.sqrt(1 - E2 * math.sin(lat) ** 2)


# --- scene_gsd ------------------------------------------------------------------------------


def test_utm_on_the_central_meridian() -> None:
    """Transverse Mercator's scale on its central meridian is k0 = 0.9996: ground = grid / k0."""
    t = from_origin(500_000.0 - 50 * 0.5, 5_000_000.0, 0.5, 0.5)
    g = scene_gsd(CRS.from_epsg(32632), t, 100, 100)
    assert g is not None
    assert g.x_m == pytest.approx(0.5 / 0.9996, rel=1e-7) and g.y_m == pytest.approx(0.5 / 0.9996, rel=1e-7)
    turn = Affine.rotation(30) @ Affine.scale(0.5, -0.5)  # 0.5 m pixels, rotated by 30°
    cx, cy = turn @ (50, 50)
    rotated = Affine.translation(500_000.0 - cx, 5_000_000.0 - cy) @ turn  # centre on the meridian
    r = scene_gsd(CRS.from_epsg(32632), rotated, 100, 100)
    assert r is not None and r.mean == pytest.approx(0.5 / 0.9996, rel=1e-7)


def test_web_mercator_is_shrunk_by_latitude() -> None:
    lat = math.radians(60.0)
    y = A * math.log(math.tan(math.pi / 4 + lat / 2))
    g = scene_gsd(CRS.from_epsg(3857), from_origin(1_000_000.0, y + 50.0, 1.0, 1.0), 100, 100)
    assert g is not None
    # dx = a dlon and dy = a dlat / cos(lat) on the sphere; ground lengths on the ellipsoid
    assert g.x_m == pytest.approx(normal_radius(lat) * math.cos(lat) / A, rel=1e-6)
    assert g.y_m == pytest.approx(meridian_radius(lat) * math.cos(lat) / A, rel=1e-6)
    assert 0.49 < g.mean < 0.51  # a nominal 1 m pixel is half a metre on the ground at 60°N


def test_lonlat_scene() -> None:
    lat = math.radians(45.0)
    step = 1e-5
    g = scene_gsd(CRS.from_epsg(4326), from_origin(9.0, 45.0 + 50 * step, step, step), 100, 100)
    assert g is not None
    assert g.x_m == pytest.approx(normal_radius(lat) * math.cos(lat) * math.radians(step), rel=1e-6)
    assert g.y_m == pytest.approx(meridian_radius(lat) * math.radians(step), rel=1e-6)


def test_feet_no_crs_and_engineering_crs() -> None:
    # NY Long Island (US survey feet): a 1 ft pixel is 0.3048006 m, times 1/k (k within 1e-4 of 1)
    g = scene_gsd(CRS.from_epsg(2263), from_origin(1_000_000.0, 200_000.0, 1.0, 1.0), 100, 100)
    assert g is not None and g.mean == pytest.approx(1200 / 3937, rel=2e-4)
    assert scene_gsd(None, Affine.identity(), 10, 10) is None
    local = CRS.from_wkt(
        'LOCAL_CS["site grid",LOCAL_DATUM["site",32767],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    )
    e = scene_gsd(local, from_origin(0, 100, 0.25, 0.5), 10, 10)
    assert e == GroundSampling(0.25, 0.5)


# --- --gsd -------------------------------------------------------------------------------------


def test_parse_gsd() -> None:
    assert parse_gsd(None) == "auto" and parse_gsd("auto") == "auto" and parse_gsd(" Native ") == "native"
    assert parse_gsd("0.3") == 0.3 and parse_gsd("0.3m") == 0.3 and parse_gsd(2) == 2.0
    for bad, msg in [("fast", "is not auto, native or"), ("-1", "must be a positive"), ("0", "must be a positive")]:
        with pytest.raises(UserError, match=f"^--gsd: '{bad}' {msg}"):
            parse_gsd(bad)


def test_plan_gsd() -> None:
    at = GroundSampling(0.6, 0.6)
    plan = plan_gsd("auto", 0.3, at, "s.tif")
    assert plan.resample and plan.target_m == 0.3 and plan.reason == "s.tif is at 0.6 m: resampling to 0.3 m (2x)"
    assert not plan_gsd("native", 0.3, at, "s.tif").resample
    assert not plan_gsd("auto", None, at, "s.tif").resample  # a model whose GSD varies (iSAID)
    assert not plan_gsd("auto", 0.3, None, "s.tif").resample  # no CRS: unknown, native
    assert not plan_gsd("auto", 0.55, at, "s.tif").resample  # within 10 %
    assert plan_gsd("auto", 0.54, at, "s.tif").resample  # 11 % off
    assert not plan_gsd("auto", 0.54, at, "s.tif", tolerance=0.2).resample
    assert plan_gsd(0.15, 0.3, at, "s.tif").target_m == 0.15  # metres override the model's GSD
    with pytest.raises(UserError, match=r"^--gsd: s.tif has no CRS"):
        plan_gsd(0.5, 0.3, None, "s.tif")
    with pytest.raises(UserError, match=r"^--gsd: s.tif is at 10 m; resampling it to 0.3 m would enlarge it 33.3x"):
        plan_gsd("auto", 0.3, GroundSampling(10.0, 10.0), "s.tif")
    assert plan_gsd("auto", 1.0, GroundSampling(MAX_UPSAMPLE, MAX_UPSAMPLE), "s.tif").resample
    assert plan_gsd("auto", 2.0, GroundSampling(0.05, 0.05), "s.tif").target_m == 2.0  # shrinking has no limit


# --- resampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [((37, 53), (74, 106)), ((37, 53), (20, 27)), ((36, 51), (60, 85)), ((9, 7), (9, 7))]
)
def test_resampling_matches_torch_antialiased_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    grid = ResampleGrid(0, 0, src[1], src[0], dst[1], dst[0])
    x = torch.from_numpy(np.random.default_rng(0).random((2, *src), dtype=np.float32))
    ours = grid.to_model(x, Window(0, 0, src[1], src[0]), Window(0, 0, dst[1], dst[0]))
    ref = F.interpolate(x[None], size=dst, mode="bilinear", align_corners=False, antialias=True)[0]
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-5, rtol=0)
    back = grid.to_scene(ref, Window(0, 0, dst[1], dst[0]), Window(0, 0, src[1], src[0]))
    ref_back = F.interpolate(ref[None], size=src, mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.allclose(back, ref_back, atol=1e-5, rtol=0)


def test_axis_taps() -> None:
    idx, w = axis_taps(10, 20, 0, 20)  # 2x up: bilinear, 3 taps of which 2 used
    assert idx.shape == (20, 3) and np.allclose(w.sum(axis=1), 1)
    assert np.count_nonzero(w[5]) == 2  # an interior pixel mixes two neighbours
    idx, w = axis_taps(20, 10, 3, 4)  # 2x down: the triangle spans 4 source pixels
    assert idx.shape == (1, 5) and w[w > 0].tolist() == pytest.approx([1 / 8, 3 / 8, 3 / 8, 1 / 8])
    assert idx[0][w[0] > 0].tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize(
    ("region", "model"), [((40, 30, 120, 90), (240, 180)), ((0, 0, 150, 96), (250, 160)), ((5, 7, 160, 128), (80, 64))]
)
def test_windows_are_exact_crops(region: tuple[int, int, int, int], model: tuple[int, int]) -> None:
    """Any window resampled alone equals, bit for bit, the crop of the whole region, both ways."""
    c, r, w, h = region
    grid = ResampleGrid(c, r, w, h, *model)
    whole_scene = Window(c, r, w, h)
    whole_model = Window(0, 0, *model)
    data = torch.from_numpy(np.random.default_rng(1).random((3, h, w), dtype=np.float32))
    full = grid.to_model(data, whole_scene, whole_model)
    back = grid.to_scene(full, whole_model, whole_scene)
    rng = np.random.default_rng(2)
    for _ in range(25):
        mw = Window(int(rng.integers(0, model[0] - 8)), int(rng.integers(0, model[1] - 8)), 8, 8)
        mw = Window(
            mw.col_off,
            mw.row_off,
            int(rng.integers(1, model[0] - mw.col_off)),
            int(rng.integers(1, model[1] - mw.row_off)),
        )
        rw = grid.scene_read_window(mw)
        part = data[:, rw.row_off - r : rw.row_off - r + rw.height, rw.col_off - c : rw.col_off - c + rw.width]
        got = grid.to_model(part, rw, mw)
        assert torch.equal(got, full[:, mw.row_off : mw.row_off + mw.height, mw.col_off : mw.col_off + mw.width])
        sw = Window(c + int(rng.integers(0, w - 4)), r + int(rng.integers(0, h - 4)), 4, 4)
        mr = grid.model_read_window(sw)
        held = full[:, mr.row_off : mr.row_off + mr.height, mr.col_off : mr.col_off + mr.width]
        got_back = grid.to_scene(held, mr, sw)
        assert torch.equal(got_back, back[:, sw.row_off - r : sw.row_off - r + 4, sw.col_off - c : sw.col_off - c + 4])


def test_window_and_coordinate_round_trips() -> None:
    t = from_origin(600_000.0, 5_000_000.0, 0.6, 0.6)
    grid = ResampleGrid.create(Window(100, 50, 300, 240), GroundSampling(0.6, 0.6), 0.3)
    assert grid.model_shape == (480, 600) and grid.scale == (Fraction(2), Fraction(2))
    assert grid.model_window(Window(110, 60, 30, 40)) == Window(20, 20, 60, 80)
    assert grid.scene_window(Window(20, 20, 60, 80)) == Window(110, 60, 30, 40)
    assert grid.scene_window(Window(21, 21, 2, 2)) == Window(110, 60, 2, 2)  # rounded outward
    assert grid.model_transform(t) == Affine(0.3, 0, 600_060.0, 0, -0.3, 4_999_970.0)
    # a 5/3 grid: windows whose edges fall on whole pixels of both grids map exactly
    g53 = ResampleGrid.create(Window(0, 0, 300, 300), GroundSampling(0.5, 0.5), 0.3)
    assert g53.scale == (Fraction(5, 3), Fraction(5, 3))
    assert g53.model_window(Window(30, 60, 90, 150)) == Window(50, 100, 150, 250)
    assert g53.scene_window(Window(50, 100, 150, 250)) == Window(30, 60, 90, 150)
    rng = np.random.default_rng(3)
    for _ in range(100):
        x, y = Fraction(int(rng.integers(0, 10**6)), 1000), Fraction(int(rng.integers(0, 10**6)), 997)
        assert g53.to_scene_xy(*g53.to_model_xy(x, y)) == (x, y)
        assert grid.to_scene_xy(*grid.to_model_xy(x, y)) == (x, y)
    # the model grid's pixel corners are on the scene's ground
    mt = g53.model_transform(t)
    for u, v in [(0, 0), (150, 250), (499, 7)]:
        sx, sy = g53.to_scene_xy(u, v)
        assert np.allclose(mt @ (u, v), t @ (float(sx), float(sy)), rtol=0, atol=1e-6)


def test_read_window_must_hold_the_taps() -> None:
    grid = ResampleGrid(0, 0, 50, 50, 100, 100)
    data = torch.zeros((1, 10, 10))
    with pytest.raises(ValueError, match="use \\*_read_window"):
        grid.to_model(data, Window(0, 0, 10, 10), Window(0, 0, 40, 40))
    with pytest.raises(TypeError, match="floating-point"):
        grid.to_model(torch.zeros((1, 10, 10), dtype=torch.uint8), Window(0, 0, 10, 10), Window(0, 0, 4, 4))
    with pytest.raises(ValueError, match="does not match the window"):
        grid.to_model(data, Window(0, 0, 11, 10), Window(0, 0, 4, 4))


# --- a real scene at twice the model's GSD ----------------------------------------------------------

MODEL_GSD = 0.3
#: (row, col, height, width) of objects in scene pixels at 0.6 m: a 12 x 6 m building, a 4.2 x 3 m car.
OBJECTS = [(40, 60, 10, 20), (150, 200, 5, 7)]


def _scene(path: Path, res: float, objects: list[tuple[int, int, int, int]], shape: tuple[int, int]) -> Path:
    data = np.full((1, *shape), 10, np.uint8)
    for r, c, h, w in objects:
        data[0, r : r + h, c : c + w] = 200
    # at the UTM 32N central meridian: the ground GSD is res / 0.9996
    return write_tif(path, data, transform=from_origin(500_000.0 - shape[1] * res / 2, 5_000_000.0, res, res))


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _predict_on_model_grid(path: Path, tile: int, overlap: int) -> tuple[ResampleGrid, torch.Tensor, np.ndarray]:
    """Read the scene tile by tile on the model grid (as predict will), stitch, and map back."""
    with rasterio.open(path) as src:
        gsd = scene_gsd(src.crs, src.transform, src.width, src.height)
        plan = plan_gsd("auto", MODEL_GSD, gsd, path.name)
        assert plan.resample and plan.target_m == MODEL_GSD and gsd is not None
        grid = ResampleGrid.create(Window(0, 0, src.width, src.height), gsd, MODEL_GSD)
        mh, mw = grid.model_shape
        model = torch.full((1, mh, mw), float("nan"))
        step = tile - overlap
        for y in range(0, mh, step):
            for x in range(0, mw, step):
                win = Window(x, y, min(tile, mw - x), min(tile, mh - y))
                read = grid.scene_read_window(win)
                data = torch.from_numpy(src.read(window=read).astype(np.float32))
                model[:, y : y + win.height, x : x + win.width] = grid.to_model(data, read, win)
        scene = src.read(1)
    return grid, model, scene


def test_a_scene_at_twice_the_model_gsd(tmp_path: Path) -> None:
    path = _scene(tmp_path / "coarse.tif", 0.6, OBJECTS, (240, 360))
    grid, model, scene = _predict_on_model_grid(path, 128, 32)
    assert grid.model_shape == (480, 720)  # 0.6 m / 0.9996 = 0.60024 m -> 2.0008x -> rounded to 2x
    assert not torch.isnan(model).any()
    whole = grid.to_model(
        torch.from_numpy(scene[None].astype(np.float32)), Window(0, 0, 360, 240), Window(0, 0, 720, 480)
    )
    assert torch.equal(model, whole)  # tiles give exactly the whole-scene resampling
    objects = (model[0] > 105).numpy()  # halfway between background (10) and object (200)
    for r, c, h, w in OBJECTS:
        assert _extent(objects[2 * r - 4 : 2 * (r + h) + 4, 2 * c - 4 : 2 * (c + w) + 4]) == (4, 4, 2 * h, 2 * w)
    # probabilities back on the scene grid: the objects have their scene size again
    probs = (model - 10) / 190
    back = grid.to_scene(probs, Window(0, 0, 720, 480), Window(0, 0, 360, 240))[0].numpy()
    assert back.shape == scene.shape and ((back > 0.5) == (scene == 200)).all()


def test_a_scene_at_half_the_model_gsd(tmp_path: Path) -> None:
    fine = [(2 * r, 2 * c, 2 * h, 2 * w) for r, c, h, w in OBJECTS]
    path = _scene(tmp_path / "fine.tif", 0.15, fine, (480, 720))
    grid, model, _ = _predict_on_model_grid(path, 96, 32)
    assert grid.model_shape == (240, 360)
    objects = (model[0] > 105).numpy()
    for r, c, h, w in OBJECTS:
        assert _extent(objects[r - 4 : r + h + 4, c - 4 : c + w + 4]) == (4, 4, h, w)


def test_validity_goes_to_the_model_grid_by_nearest_neighbour() -> None:
    grid = ResampleGrid(0, 0, 30, 20, 45, 40)  # 1.5x across, 2x down
    valid = np.ones((20, 30), bool)
    valid[4:8, 6:12] = False
    out = grid.valid_to_model(valid, Window(0, 0, 30, 20), Window(0, 0, 45, 40))
    assert out.shape == (40, 45) and _extent(~out) == (8, 9, 8, 9)
    part = grid.valid_to_model(valid[2:12, 4:20], Window(4, 2, 16, 10), Window(8, 6, 20, 14))
    assert (part == out[6:20, 8:28]).all()


def test_raster_gsd(tmp_path: Path) -> None:
    path = _scene(tmp_path / "s.tif", 0.6, [], (20, 30))
    g = raster_gsd(path)
    assert g is not None and g.mean == pytest.approx(0.6 / 0.9996, rel=1e-7)
    assert raster_gsd(write_tif(tmp_path / "plain.tif", np.zeros((1, 4, 4), np.uint8), crs=None)) is None
    with pytest.raises(UserError, match="no such file"):
        raster_gsd(tmp_path / "missing.tif")
