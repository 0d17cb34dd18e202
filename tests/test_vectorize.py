"""vectorize: CRS and units, attributes, post-processing, formats, errors and atomic output."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from segnext_geo.errors import UserError
from segnext_geo.vector import VectorOptions, vectorize_raster

UTM = from_origin(600_000.0, 5_000_000.0, 10.0, 10.0)


def write_raster(
    path: Path,
    a: np.ndarray,
    *,
    transform: Affine = UTM,
    crs: str | None = "EPSG:32633",
    nodata: float | None = 255,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write ``a`` ((H, W) or (K, H, W)) as a tiled GeoTIFF into ``path``."""
    a3 = a[None] if a.ndim == 2 else a
    profile = {"driver": "GTiff", "count": a3.shape[0], "height": a3.shape[1], "width": a3.shape[2]}
    profile.update(dtype=a3.dtype.name, crs=crs, transform=transform, tiled=True, blockxsize=16, blockysize=16)
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the no-CRS case is deliberate
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(a3)
            if tags:
                dst.update_tags(**tags)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli.app", "vectorize", *args], capture_output=True, text=True, check=False
    )


def scene() -> np.ndarray:
    """40x40: a 20x10 px building (class 1) across 4 blocks of 8, a 3x3 road (2), nodata corner, background."""
    a = np.zeros((40, 40), np.uint8)
    a[5:15, 6:26] = 1
    a[30:33, 30:33] = 2
    a[36:, :4] = 255
    return a


# -- CRS, units, attributes -------------------------------------------------------------------------
def test_projected_crs_areas_perimeters_and_attributes(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene(), tags={"class_names": json.dumps(["bg", "building", "road"])})
    r = vectorize_raster(mask, tmp_path / "p.gpkg", VectorOptions(block_size=8), progress=False)
    assert r.count == 2 and r.crs == "EPSG:32633" and r.warnings == []
    assert pyogrio.read_info(r.path)["crs"] == "EPSG:32633"
    df = gpd.read_file(r.path).sort_values("class_id")
    assert list(df.columns) == ["class_id", "class_name", "area_m2", "perimeter_m", "source", "geometry"]
    assert df["class_name"].tolist() == ["building", "road"]
    assert df["area_m2"].tolist() == [200 * 100.0, 9 * 100.0]
    assert df["perimeter_m"].tolist() == [2 * (200 + 100.0), 4 * 30.0]
    assert set(df["source"]) == {str(mask)}
    assert df.geometry.iloc[0].bounds == (600_060.0, 4_999_850.0, 600_260.0, 4_999_950.0)
    assert r.per_class == {"building": 1, "road": 1}


def test_feet_crs_reports_square_metres(tmp_path: Path) -> None:
    ft = 0.30480060960121924  # US survey foot (EPSG:2263)
    mask = write_raster(tmp_path / "m.tif", scene(), crs="EPSG:2263", transform=from_origin(1e6, 2e5, 3.0, 3.0))
    df = gpd.read_file(vectorize_raster(mask, tmp_path / "f.gpkg", progress=False).path).sort_values("class_id")
    assert df["area_m2"].to_numpy() == pytest.approx(np.array([200, 9]) * (3 * ft) ** 2, rel=1e-12)
    assert df["perimeter_m"].iloc[1] == pytest.approx(4 * 9 * ft, rel=1e-12)


def test_geographic_crs_measures_on_the_ellipsoid(tmp_path: Path) -> None:
    from pyproj import Geod

    mask = write_raster(tmp_path / "m.tif", scene(), crs="EPSG:4326", transform=from_origin(10.0, 60.0, 1e-3, 1e-3))
    r = vectorize_raster(mask, tmp_path / "g.gpkg", VectorOptions(block_size=16), progress=False)
    assert pyogrio.read_info(r.path)["crs"] == "EPSG:4326"
    df = gpd.read_file(r.path)
    geod = Geod(ellps="WGS84")
    for g, area, perim in zip(df.geometry, df["area_m2"], df["perimeter_m"], strict=True):
        # geodesics between points 1e-5 deg apart follow the pixel edges (parallels, meridians)
        geodesic_area, geodesic_perim = geod.geometry_area_perimeter(shapely.segmentize(g, 1e-5))
        assert area == pytest.approx(abs(geodesic_area), rel=1e-9)  # building ~ 111 m x 56 m at 60N
        assert perim == pytest.approx(geodesic_perim, rel=1e-10)
    assert df["area_m2"].max() > 5000


def test_missing_crs_is_allowed_with_a_warning(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene(), crs=None, transform=Affine.identity())
    r = vectorize_raster(mask, tmp_path / "n.gpkg", VectorOptions(block_size=8), progress=False)
    assert r.crs is None and any("no CRS" in w and "pixel" in w for w in r.warnings)
    df = gpd.read_file(r.path).sort_values("class_id")
    assert df.crs is None and df["area_m2"].tolist() == [200.0, 9.0]
    assert pyogrio.read_info(r.path, layer="n")["layer_metadata"]["measures"].startswith("raster units")


def test_internal_mask_band_marks_invalid_pixels(tmp_path: Path) -> None:
    a = np.ones((32, 32), np.uint8)
    path = write_raster(tmp_path / "m.tif", a, nodata=None)
    with rasterio.open(path, "r+") as dst:
        valid = np.full((32, 32), 255, np.uint8)
        valid[:, 16:] = 0  # right half masked out
        dst.write_mask(valid)
    r = vectorize_raster(path, tmp_path / "k.gpkg", VectorOptions(block_size=8), progress=False)
    df = gpd.read_file(r.path)
    assert r.count == 1 and df["area_m2"].tolist() == [32 * 16 * 100.0]


def test_mean_confidence_from_one_band_and_per_class_probabilities(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = scene()
    mask = write_raster(tmp_path / "m.tif", a)
    conf = rng.integers(0, 256, a.shape, dtype=np.uint8)
    per_class = rng.integers(0, 256, (3, *a.shape), dtype=np.uint8)
    one = write_raster(tmp_path / "c.tif", conf, nodata=None)
    k = write_raster(tmp_path / "k.tif", per_class, nodata=None)
    for probs, expect in ((one, lambda c: conf[a == c]), (k, lambda c: per_class[c][a == c])):
        r = vectorize_raster(
            mask, tmp_path / f"{probs.stem}.gpkg", VectorOptions(block_size=8), probs=probs, progress=False
        )
        df = gpd.read_file(r.path)
        for c, m in zip(df["class_id"], df["mean_confidence"], strict=True):
            assert m == pytest.approx(expect(c).mean() / 255, rel=1e-12)


def test_probabilities_on_another_grid_are_refused(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene())
    probs = write_raster(tmp_path / "p.tif", np.zeros((20, 40), np.uint8), nodata=None)
    with pytest.raises(UserError, match=r"--probs: .* is 40x20 px but the mask is 40x40 px"):
        vectorize_raster(mask, tmp_path / "x.gpkg", probs=probs, progress=False)
    four = write_raster(tmp_path / "p4.tif", np.zeros((4, 40, 40), np.uint8), nodata=None)
    with pytest.raises(UserError, match="has 4 bands but there are 3 classes"):
        vectorize_raster(mask, tmp_path / "x.gpkg", probs=four, class_names=["a", "b", "c"], progress=False)
    assert not (tmp_path / "x.gpkg").exists()


# -- post-processing ----------------------------------------------------------------------------------
def test_min_area_applies_after_the_seam_merge(tmp_path: Path) -> None:
    a = np.zeros((16, 16), np.uint8)
    a[2:6, 6:10] = 1  # 16 px, split 4 ways by 8-px blocks: each piece is 4 px
    a[12:14, 12:14] = 1  # 4 px
    mask = write_raster(tmp_path / "m.tif", a)
    r = vectorize_raster(mask, tmp_path / "a.gpkg", VectorOptions(block_size=8, min_area=10 * 100.0), progress=False)
    df = gpd.read_file(r.path)
    assert df["area_m2"].tolist() == [1600.0] and r.dropped_small == 1


def test_fill_holes_absorbs_what_lies_in_them(tmp_path: Path) -> None:
    a = np.zeros((24, 24), np.uint8)
    a[2:22, 2:22] = 1  # building across the 4 blocks of 12
    a[10:12, 4:6] = 2  # 4-px hole holding a road polygon: filled, road absorbed
    a[5, 15] = 255  # 1-px nodata hole: filled
    a[14:20, 13:19] = 3  # 36-px hole across the seams: too big, kept with its polygon
    mask = write_raster(tmp_path / "m.tif", a)
    r = vectorize_raster(
        mask, tmp_path / "h.gpkg", VectorOptions(block_size=12, fill_holes_below=10 * 100.0), progress=False
    )
    df = gpd.read_file(r.path).sort_values("class_id")
    assert df["class_id"].tolist() == [1, 3] and r.absorbed == 1
    building = df.geometry.iloc[0]
    assert len(building.interiors) == 1 and building.area == (400 - 36) * 100.0
    assert shapely.area(df.geometry.values).sum() == pytest.approx(shapely.union_all(df.geometry.values).area)


def test_a_small_polygon_keeps_its_own_filled_hole(tmp_path: Path) -> None:
    a = np.zeros((12, 12), np.uint8)
    a[2:5, 2:5] = 1
    a[3, 3] = 0  # an 8-px ring around a 1-px hole: filled, it is a 9-px polygon below the threshold
    a[7:10, 7:10] = 2
    a[8, 8] = 3  # a 1-px polygon in a 1-px hole: absorbed
    mask = write_raster(tmp_path / "m.tif", a)
    for simplify in (None, "0.5px"):
        r = vectorize_raster(
            mask,
            tmp_path / "o.gpkg",
            VectorOptions(fill_holes_below=2000.0, simplify=simplify),
            overwrite=True,
            progress=False,
        )
        df = gpd.read_file(r.path).sort_values("class_id")
        assert df["class_id"].tolist() == [1, 2] and r.absorbed == 1
        if simplify is None:
            assert df["area_m2"].tolist() == [900.0, 900.0]


def test_coverage_simplify_keeps_shared_edges(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 3, (9, 9)).astype(np.uint8)
    a = np.kron(small, np.ones((6, 6), np.uint8))[:50, :50]
    a[rng.random(a.shape) < 0.05] = 2  # ragged edges
    mask = write_raster(tmp_path / "m.tif", a)
    plain = vectorize_raster(
        mask, tmp_path / "p.gpkg", VectorOptions(keep_background=True, block_size=16), progress=False
    )
    metres = vectorize_raster(
        mask, tmp_path / "s.gpkg", VectorOptions(keep_background=True, block_size=16, simplify="15"), progress=False
    )
    pixels = vectorize_raster(
        mask, tmp_path / "x.gpkg", VectorOptions(keep_background=True, block_size=16, simplify="1.5px"), progress=False
    )
    g0 = np.asarray(gpd.read_file(plain.path).geometry.values)
    g1 = np.asarray(gpd.read_file(metres.path).geometry.values)
    g2 = np.asarray(gpd.read_file(pixels.path).geometry.values)
    assert len(g1) == len(g0) and shapely.is_valid(g1).all()
    assert shapely.get_num_coordinates(g1).sum() < 0.8 * shapely.get_num_coordinates(g0).sum()
    assert shapely.coverage_is_valid(g1)  # shared edges match exactly after simplification
    union = shapely.union_all(g1)
    assert shapely.area(g1).sum() == pytest.approx(union.area, rel=1e-9)  # no overlaps
    assert union.geom_type == "Polygon" and len(union.interiors) == 0  # no gaps
    assert union.area == pytest.approx(500.0 * 500.0, rel=1e-3)
    # a tolerance in metres is the same as in pixels (10 m pixels)
    assert sorted(shapely.to_wkb(g1).tolist()) == sorted(shapely.to_wkb(g2).tolist())


# -- formats and output rules -----------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".fgb", ".geojson", ".shp"])
def test_other_formats(tmp_path: Path, ext: str) -> None:
    mask = write_raster(tmp_path / "m.tif", scene())
    r = vectorize_raster(mask, tmp_path / f"o{ext}", VectorOptions(block_size=8, connectivity=8), progress=False)
    df = gpd.read_file(r.path)
    assert len(df) == 2 and df.crs.to_epsg() == 32633
    assert set(df.geom_type) == ({"Polygon"} if ext == ".shp" else {"MultiPolygon"})  # .shp does not tell
    assert sorted(df["area_m2"]) == [900.0, 20000.0]
    if ext == ".shp":
        assert "perim_m" in df.columns and any("10 characters" in w for w in r.warnings)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_geojson_in_wgs84_on_request(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene())
    r = vectorize_raster(mask, tmp_path / "w.geojson", VectorOptions(to_wgs84=True), progress=False)
    df = gpd.read_file(r.path)
    assert df.crs.to_epsg() == 4326 and r.crs == "EPSG:4326"
    minx, miny, maxx, maxy = df.total_bounds
    assert 16 < minx < maxx < 17 and 45 < miny < maxy < 46  # UTM 33N, 600 km E, 5000 km N
    assert sorted(df["area_m2"]) == [900.0, 20000.0]  # measured in the raster's CRS


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="GeoParquet output needs pyarrow")
def test_geoparquet(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene())
    df = gpd.read_parquet(vectorize_raster(mask, tmp_path / "o.parquet", progress=False).path)
    assert len(df) == 2 and df.crs.to_epsg() == 32633


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_geoparquet_without_pyarrow_is_a_clear_error(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene())
    with pytest.raises(UserError, match="GeoParquet output needs pyarrow"):
        vectorize_raster(mask, tmp_path / "o.parquet", progress=False)


def test_empty_result_writes_a_valid_empty_layer(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", np.zeros((20, 20), np.uint8))
    for ext in (".gpkg", ".fgb", ".geojson"):
        r = vectorize_raster(mask, tmp_path / f"e{ext}", progress=False)
        assert r.count == 0 and any("empty layer" in w for w in r.warnings)
        df = gpd.read_file(r.path)
        assert len(df) == 0 and ("class_id" in df.columns or ext == ".geojson")  # GeoJSON has no schema


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene())
    out = tmp_path / "o.gpkg"
    out.write_text("keep me")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        vectorize_raster(mask, out, progress=False)
    assert out.read_text() == "keep me"
    assert vectorize_raster(mask, out, overwrite=True, progress=False).count == 2


# -- command line ------------------------------------------------------------------------------------
def test_cli_writes_polygons_with_progress(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene(), tags={"class_names": json.dumps(["bg", "building", "road"])})
    res = cli(str(mask), "--out", str(tmp_path / "o.gpkg"), "--block-size", "8", "--classes", "1")
    assert res.returncode == 0, res.stderr
    assert "wrote 1 polygons" in res.stdout and "building 1" in res.stdout
    assert "vectorize" in res.stderr  # the tqdm bar over blocks
    assert gpd.read_file(tmp_path / "o.gpkg")["class_name"].tolist() == ["building"]


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: write_raster(p, np.zeros((8, 8), np.float32), nodata=None), [], "not an integer class raster"),
        (lambda p: write_raster(p, np.zeros((3, 8, 8), np.uint8)), [], "expected a single-band class raster"),
        (lambda p: write_raster(p, np.zeros((8, 8), np.uint8)), ["--out", "o.xyz"], "unknown output extension"),
        (lambda p: write_raster(p, np.zeros((8, 8), np.uint8)), ["--classes", "a,b"], "--classes"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, make: object, extra: list[str], message: str) -> None:
    mask = make(tmp_path / "bad.tif")  # type: ignore[operator]
    out = ["--out", str(tmp_path / "o.gpkg")] if "--out" not in extra else []
    extra = [str(tmp_path / e) if e.startswith("o.") else e for e in extra]
    res = cli(str(mask), *out, *extra)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_cli_missing_crs_warns(tmp_path: Path) -> None:
    mask = write_raster(tmp_path / "m.tif", scene(), crs=None, transform=Affine.identity())
    res = cli(str(mask), "--out", str(tmp_path / "o.gpkg"), "-q")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "no CRS" in lines[0]  # once, as a warning
    assert "no CRS" in res.stdout


def test_a_corrupt_mask_fails_cleanly_and_leaves_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "m.tif"
    a = rng.integers(0, 4, (256, 256), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8", crs="EPSG:32633",
        transform=UTM, nodata=255, tiled=True, blockxsize=64, blockysize=64, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(a, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # tiles at the end are gone
    res = cli(str(path), "--out", str(tmp_path / "o.gpkg"), "--block-size", "64", "-q")
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "m.tif" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


def test_ground_control_points_give_the_best_fit_transform(tmp_path: Path) -> None:
    from rasterio.control import GroundControlPoint

    path = tmp_path / "m.tif"
    corners = [(0, 0), (0, 40), (40, 0), (40, 40)]  # (row, col) -> 10 m pixels from (600000, 5000000)
    gcps = [GroundControlPoint(row=r, col=c, x=600_000.0 + 10 * c, y=5_000_000.0 - 10 * r) for r, c in corners]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # GCPs only, set after opening
        with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=1, dtype="uint8", nodata=255) as dst:
            dst.write(scene(), 1)
            dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(32633))
    r = vectorize_raster(path, tmp_path / "g.gpkg", progress=False)
    assert r.crs == "EPSG:32633" and any("ground control points" in w for w in r.warnings)
    df = gpd.read_file(r.path).sort_values("class_id")
    assert df.geometry.iloc[0].bounds == pytest.approx((600_060.0, 4_999_850.0, 600_260.0, 4_999_950.0))
    assert df["area_m2"].iloc[0] == pytest.approx(20_000.0)


def test_noding_makes_pixel_polygons_a_valid_coverage() -> None:
    from rasterio.features import shapes

    from segnext_geo.vector.noding import node_pixel_polygons
    from segnext_geo.vector.polygonize import shapes_to_polygons

    # a T-junction: the long bottom box has no vertex where the two upper boxes meet
    t = np.array([shapely.box(0, 0, 4, 1), shapely.box(0, 1, 2, 2), shapely.box(2, 1, 4, 2)], dtype=object)
    assert not shapely.coverage_is_valid(t)
    noded = node_pixel_polygons(t)
    assert shapely.coverage_is_valid(noded) and [2.0, 1.0] in shapely.get_coordinates(noded[0]).tolist()
    rng = np.random.default_rng(5)
    a = np.kron(rng.integers(0, 4, (12, 12)), np.ones((3, 2), int)).astype(np.uint8)
    a[rng.random(a.shape) < 0.2] = 1
    for conn in (4, 8):
        g, _, _ = shapes_to_polygons(shapes(a, connectivity=conn))
        g = shapely.make_valid(g, method="structure", keep_collapsed=False)
        n = node_pixel_polygons(g)
        assert shapely.equals(n, g).all() and shapely.is_valid(n).all()
        assert (shapely.get_type_id(n) == shapely.get_type_id(g)).all()
        assert shapely.coverage_is_valid(n) and not shapely.coverage_is_valid(g)
        assert shapely.get_num_coordinates(n).sum() < 1.2 * shapely.get_num_coordinates(g).sum()


@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGINT, "2"), (signal.SIGTERM, "1")])
def test_interrupted_run_leaves_nothing(tmp_path: Path, sig: signal.Signals, workers: str) -> None:
    rng = np.random.default_rng(0)
    mask = write_raster(tmp_path / "m.tif", rng.integers(0, 6, (512, 1024), dtype=np.uint8))
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "vectorize", str(mask), "--out", str(tmp_path / "o.gpkg")]
    proc = subprocess.Popen(
        [*cmd, "--block-size", "8", "--workers", workers],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, not a shell job
    )
    assert proc.stderr is not None
    seen = ""
    while "open=" not in seen:  # wait until blocks are coming back (workers are up), then interrupt
        char = proc.stderr.read(1)
        assert char, f"the run ended before it could be interrupted: {seen}"
        seen += char
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "error: interrupted" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]
