"""vectorize reads validity as predict does (GDAL's masks), takes a nodata override, wide integer
types, ``.msk``, ``/vsizip/`` and ``/vsimem/`` masks, and refuses rasters that are not classes."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from segnext_geo.errors import UserError
from segnext_geo.vector import VectorOptions, vectorize_raster

TF = from_origin(600_000.0, 5_000_000.0, 1.0, 1.0)


def write(
    path: Path, a: np.ndarray, *, nodata: float | None = None, msk: np.ndarray | None = None, **kw: object
) -> Path:
    profile = dict(driver="GTiff", width=a.shape[1], height=a.shape[0], count=1, dtype=a.dtype.name, crs="EPSG:32633")
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(kw)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(path, "w", transform=TF, **profile) as dst:
        dst.write(a, 1)
        if msk is not None:
            dst.write_mask(msk.astype(np.uint8) * 255)
    return path


def covered(path: Path) -> np.ndarray:
    """The pixels the written polygons cover (pixel centres inside the union)."""
    df = gpd.read_file(path)
    union = shapely.union_all(df.geometry.values)
    h, w = 12, 16
    rows, cols = np.mgrid[0:h, 0:w]
    x, y = TF.c + (cols + 0.5) * TF.a, TF.f + (rows + 0.5) * TF.e
    return shapely.contains_xy(union, x, y)


def classes() -> np.ndarray:
    a = np.zeros((12, 16), np.uint8)
    a[2:9, 3:13] = 1
    a[4:6, 5:8] = 2
    a[10:, :] = 3
    return a


def test_a_msk_sidecar_wins_over_the_nodata_value(tmp_path: Path) -> None:
    """Issue 11 item 10: the nodata value overrode the .msk, unlike GDAL and predict."""
    a = classes()
    a[0, :] = 9  # the nodata value, but valid in the .msk: GDAL's semantics keep it
    msk = np.ones(a.shape, bool)
    msk[:, :4] = False
    mask = write(tmp_path / "m.tif", a, nodata=9, msk=msk)
    assert Path(f"{mask}.msk").exists()
    r = vectorize_raster(mask, tmp_path / "o.gpkg", VectorOptions(block_size=5), progress=False)
    assert (covered(r.path) == (msk & (a != 0))).all()
    assert 9 in set(gpd.read_file(r.path)["class_id"])


def test_a_nodata_override_replaces_the_masks_nodata(tmp_path: Path) -> None:
    a = classes()
    mask = write(tmp_path / "m.tif", a, nodata=2)
    r = vectorize_raster(mask, tmp_path / "o.gpkg", VectorOptions(nodata=3, block_size=5), progress=False)
    df = gpd.read_file(r.path)
    assert sorted(df["class_id"]) == [1, 2]  # 2 is a class now, 3 is nodata
    args = [str(mask), "-o", str(tmp_path / "c.gpkg"), "--nodata", "1", "-q"]
    res = subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli.app", "vectorize", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(gpd.read_file(tmp_path / "c.gpkg")["class_id"]) == [2, 3]
    with pytest.raises(UserError, match=r"^--nodata: -1 is not a value of uint8 data"):
        vectorize_raster(mask, tmp_path / "x.gpkg", VectorOptions(nodata=-1), progress=False)


@pytest.mark.parametrize(("dtype", "nodata"), [("uint32", 2**32 - 1), ("int64", -(2**40)), ("int64", 2**40)])
def test_wide_integer_masks_with_nodata_outside_int32(tmp_path: Path, dtype: str, nodata: int) -> None:
    """Issue 11 item 9: the nodata value itself made the mask 'not fit in 32 bits'."""
    a = classes().astype(dtype)
    a[:, 14:] = nodata
    mask = write(tmp_path / "w.tif", a, nodata=nodata)
    r = vectorize_raster(mask, tmp_path / "o.gpkg", VectorOptions(block_size=5), progress=False)
    assert (covered(r.path) == ((a != 0) & (a != nodata))).all()


@pytest.mark.parametrize(("dtype", "bad"), [("uint32", 2**31 + 5), ("int64", -(2**40) - 3), ("int64", 2**33)])
def test_a_class_id_outside_32_bits_is_named(tmp_path: Path, dtype: str, bad: int) -> None:
    a = classes().astype(dtype)
    a[0, 0] = bad
    if dtype == "int64":
        a[1, 1] = 7  # a positive maximum that fits: the message must still name the bad value
    mask = write(tmp_path / "w.tif", a)
    with pytest.raises(UserError) as e:
        vectorize_raster(mask, tmp_path / "o.gpkg", VectorOptions(force_classes=True), progress=False)
    assert str(e.value) == f"{mask}: class ids must fit in 32 bits, found {bad}"


def test_msk_in_a_zip_and_a_memory_mask(tmp_path: Path) -> None:
    a = classes()
    msk = np.ones(a.shape, bool)
    msk[6:, 8:] = False
    mask = write(tmp_path / "z.tif", a, msk=msk)
    archive = tmp_path / "masks.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(mask, "z.tif")
        z.write(f"{mask}.msk", "z.tif.msk")
    r = vectorize_raster(f"/vsizip/{archive}/z.tif", tmp_path / "zip.gpkg", VectorOptions(block_size=5), progress=False)
    assert (covered(r.path) == (msk & (a != 0))).all()
    with MemoryFile(ext=".tif") as mem:
        with mem.open(driver="GTiff", width=16, height=12, count=1, dtype="uint8", crs="EPSG:32633", transform=TF) as d:
            d.write(a, 1)
            d.write_mask(msk.astype(np.uint8) * 255)
        # worker processes cannot see this process's /vsimem/: vectorize says so and uses one process
        opts = VectorOptions(block_size=5, workers=2)
        r = vectorize_raster(mem.name, tmp_path / "mem.gpkg", opts, progress=False)
        assert any("/vsimem/" in w and "1 process" in w for w in r.warnings)
    assert (covered(r.path) == (msk & (a != 0))).all()


# -- rasters that are not classes (issue 11 item 15) --------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli.app", "vectorize", *args], capture_output=True, text=True, check=False
    )


def one_line_error(res: subprocess.CompletedProcess[str], *words: str) -> str:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_an_image_is_refused_unless_forced(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pan = rng.integers(0, 4000, (120, 150)).astype(np.uint16)  # a panchromatic image: ~4,000 values
    path = write(tmp_path / "pan.tif", pan)
    one_line_error(cli(str(path), "-o", str(tmp_path / "o.gpkg"), "-q"), "pan.tif", "1,000", "--force-classes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pan.tif"]
    res = cli(str(path), "-o", str(tmp_path / "o.gpkg"), "-q", "--force-classes")
    assert res.returncode == 0, res.stderr
    assert len(gpd.read_file(tmp_path / "o.gpkg")) > 1000
    named = write(tmp_path / "named.tif", pan)  # named classes are classes, however many
    res = cli(str(named), "-o", str(tmp_path / "n.gpkg"), "-q", "--class-names", ",".join(f"c{i}" for i in range(4000)))
    assert res.returncode == 0, res.stderr


def test_an_image_the_sample_misses_is_still_refused(tmp_path: Path) -> None:
    """> 1 MPix: open_mask samples windows; 1,500 values in a row between them are found while polygonizing."""
    a = np.ones((1100, 1000), np.uint16)
    a[260, :] = np.arange(1000) + 10
    a[262, :500] = np.arange(500) + 2000
    from segnext_geo.raster.normalize import sample_windows

    assert all(not (w.row_off <= 260 < w.row_off + w.height) for w in sample_windows(1100, 1000))
    path = write(tmp_path / "img.tif", a)
    with pytest.raises(UserError, match="more than 1,000 distinct values"):
        vectorize_raster(path, tmp_path / "o.gpkg", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif"]


def test_a_float_raster_of_class_ids_needs_force(tmp_path: Path) -> None:
    a = classes().astype(np.float32)
    path = write(tmp_path / "f.tif", a, nodata=-1.0)
    one_line_error(cli(str(path), "-o", str(tmp_path / "o.gpkg")), "f.tif", "float32", "--force-classes")
    res = cli(str(path), "-o", str(tmp_path / "o.gpkg"), "-q", "--force-classes")
    assert res.returncode == 0, res.stderr
    df = gpd.read_file(tmp_path / "o.gpkg")
    assert sorted(df["class_id"]) == [1, 2, 3] and df["class_id"].dtype.kind == "i"
    a[3, 3] = 1.5
    bad = write(tmp_path / "frac.tif", a)
    one_line_error(
        cli(str(bad), "-o", str(tmp_path / "b.gpkg"), "-q", "--force-classes"),
        "frac.tif",
        "1.5",
        "row 3, col 3",
        "whole",
    )


# -- messages (issue 11 item 16) -------------------------------------------------------------------------------
def test_an_empty_file_is_called_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.tif").write_bytes(b"")
    one_line_error(cli(str(tmp_path / "empty.tif"), "-o", str(tmp_path / "o.gpkg")), "empty.tif: is empty (0 bytes)")


def test_notes_name_the_users_source_not_the_file_read(tmp_path: Path) -> None:
    a = classes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            tmp_path / ".scratch.mask-123.tif", "w", driver="GTiff", width=16, height=12, count=1, dtype="uint8"
        ) as dst:
            dst.write(a, 1)
    r = vectorize_raster(tmp_path / ".scratch.mask-123.tif", tmp_path / "o.gpkg", source="scene.tif", progress=False)
    assert r.warnings and all(w.startswith("scene.tif: ") and "scratch" not in w for w in r.warnings)


def test_help_describes_simplify_in_metres_or_pixels() -> None:
    res = cli("--help")
    text = " ".join(res.stdout.replace("│", " ").split())
    assert "metres, or pixels with 'px'" in text and "--nodata" in text and "--force-classes" in text


def test_predict_to_polygons_names_the_scene_in_its_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rasters import PixelLinear, pixel_meta, textured

    from segnext_geo.inference import predict_scene

    scene = tmp_path / "scene.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(scene, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint8") as dst:
            dst.write(textured((3, 30, 40)))  # no CRS: vectorize notes it too
    with caplog.at_level(logging.WARNING, logger="segnext_geo"):
        predict_scene(
            scene, PixelLinear(3, 3), tmp_path / "p.gpkg", meta=pixel_meta(3), tile_size=64, overlap=16, progress=False
        )
    said = [r.getMessage() for r in caplog.records]
    assert any("no CRS; coordinates" in w for w in said)  # vectorize's own note
    assert all(w.startswith(f"{scene}: ") and ".mask-" not in w for w in said), said
