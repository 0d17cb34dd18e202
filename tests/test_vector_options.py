"""VectorOptions (typed, validated vectorize options) and check_outputs (no output may be an input)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from segnext_geo.errors import UserError
from segnext_geo.outputs import check_outputs
from segnext_geo.vector import VectorOptions, vectorize_raster
from segnext_geo.vector.options import parse_tolerance


# -- VectorOptions ------------------------------------------------------------------------------------
def test_defaults_are_the_documented_ones() -> None:
    o = VectorOptions()
    assert (o.classes, o.keep_background, o.min_area, o.fill_holes_below, o.simplify) == (None, False, None, None, None)
    assert (o.connectivity, o.block_size, o.workers, o.to_wgs84, o.nodata) == (4, 2048, 1, False, None)
    assert o.tolerance is None and o.min_area_m2 is None and o.fill_holes_m2 is None


def test_values_are_normalised() -> None:
    o = VectorOptions(classes=[3, np.int64(1)], min_area=20, fill_holes_below="5", simplify="1.5px", nodata=0)  # type: ignore[arg-type]
    assert o.classes == (3, 1) and all(type(c) is int for c in o.classes)
    assert o.min_area == 20.0 and isinstance(o.min_area, float) and o.fill_holes_below == 5.0
    assert o.tolerance == (1.5, "px") and o.nodata == 0.0
    assert VectorOptions(simplify=2.5).tolerance == (2.5, "m") and VectorOptions(simplify=" 2.5m ").tolerance == (
        2.5,
        "m",
    )


@pytest.mark.parametrize("zero", [0, 0.0, "0", "0px", "0m", "0.0"])
def test_zero_means_off(zero: object) -> None:
    assert VectorOptions(simplify=zero).tolerance is None  # type: ignore[arg-type]
    assert parse_tolerance(zero) is None  # type: ignore[arg-type]
    assert VectorOptions(min_area=0, fill_holes_below=0).min_area_m2 is None
    assert VectorOptions(min_area=0, fill_holes_below=0).fill_holes_m2 is None


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("classes", "1,3", "--classes"),
        ("classes", [], "--classes"),
        ("classes", [1.5], "--classes"),
        ("classes", [True], "--classes"),
        ("keep_background", "yes", "--keep-background"),
        ("min_area", -1, "--min-area"),
        ("min_area", float("nan"), "--min-area"),
        ("min_area", "big", "--min-area"),
        ("fill_holes_below", float("inf"), "--fill-holes-below"),
        ("simplify", "2 feet", "--simplify"),
        ("simplify", -2, "--simplify"),
        ("simplify", True, "--simplify"),
        ("simplify", float("inf"), "--simplify"),
        ("connectivity", 6, "--connectivity"),
        ("connectivity", 4.0, "--connectivity"),
        ("block_size", 0, "--block-size"),
        ("block_size", "big", "--block-size"),
        ("workers", 0, "--workers"),
        ("workers", 1.5, "--workers"),
        ("to_wgs84", 1, "--to-wgs84"),
        ("nodata", "none", "--nodata"),
        ("force_classes", "no", "--force-classes"),
    ],
)
def test_bad_values_name_the_flag(field: str, value: object, flag: str) -> None:
    with pytest.raises(UserError) as e:
        VectorOptions(**{field: value})  # type: ignore[arg-type]
    msg = str(e.value)
    assert msg.startswith(f"{flag}: ") and field not in msg.replace(flag, "") and "\n" not in msg


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        VectorOptions().workers = 2  # type: ignore[misc]


def test_options_module_is_light() -> None:
    code = (
        "import sys, segnext_geo.vector.options, segnext_geo.vector; "
        "heavy = [m for m in ('numpy', 'shapely', 'rasterio', 'pyogrio', 'torch') if m in sys.modules]; "
        "print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# -- check_outputs ------------------------------------------------------------------------------------
def test_an_output_that_is_an_input_is_refused_even_with_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scene = tmp_path / "a.tif"
    scene.write_bytes(b"scene")
    os.link(scene, tmp_path / "hard.tif")
    (tmp_path / "soft.tif").symlink_to(scene)
    (tmp_path / "sub").mkdir()
    for out in ("a.tif", "./a.tif", "sub/../a.tif", str(scene), "hard.tif", "soft.tif"):
        for overwrite in (False, True):
            with pytest.raises(UserError) as e:
                check_outputs(["a.tif"], [("--probs-out", Path(out))], overwrite)
            msg = str(e.value)
            assert msg.startswith(f"--probs-out: {Path(out)} ") and "input" in msg and "--overwrite" not in msg
    # the input given as a symlink, the output as the real file
    with pytest.raises(UserError, match="input"):
        check_outputs(["soft.tif"], [("--out", scene)], True)


def test_an_output_inside_an_archive_input_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inner/a.tif", b"scene")
    for inp in (f"/vsizip/{archive}/inner/a.tif", f"/vsizip/{{{archive}}}/inner/a.tif"):
        with pytest.raises(UserError, match="input"):
            check_outputs([inp], [("--out", archive)], True)
    check_outputs(["/vsimem/a.tif"], [("--out", tmp_path / "a.tif")], False)  # memory files are never on disk


def test_two_outputs_naming_one_file_are_refused(tmp_path: Path) -> None:
    x = tmp_path / "x.tif"
    with pytest.raises(UserError) as e:
        check_outputs([], [("--out", x), ("--mask-out", None), ("--probs-out", tmp_path / "." / "x.tif")], False)
    assert str(e.value) == f"--probs-out: {tmp_path / 'x.tif'} is also --out; give each output its own file"


def test_existing_outputs_need_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "o.tif"
    out.write_bytes(b"old")
    with pytest.raises(UserError, match=r"^--mask-out: .* already exists; pass --overwrite"):
        check_outputs([tmp_path / "in.tif"], [("--mask-out", out)], False)
    check_outputs([tmp_path / "in.tif"], [("--mask-out", out), ("--out", None)], True)


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_vectorize_never_writes_over_its_input(tmp_path: Path) -> None:
    """A GeoTIFF named .gpkg is still read as a GeoTIFF: `--out` = the mask would destroy it."""
    mask = tmp_path / "classes.gpkg"
    a = np.zeros((16, 16), np.uint8)
    a[4:8, 4:8] = 1
    profile = dict(driver="GTiff", width=16, height=16, count=1, dtype="uint8", crs="EPSG:32633", nodata=255)
    with rasterio.open(mask, "w", transform=from_origin(0, 16, 1, 1), **profile) as dst:
        dst.write(a, 1)
    probs = tmp_path / "probs.gpkg"
    with rasterio.open(probs, "w", transform=from_origin(0, 16, 1, 1), **profile) as dst:
        dst.write(a, 1)
    before = _md5(mask), _md5(probs)
    with pytest.raises(UserError, match="input"):
        vectorize_raster(mask, mask, overwrite=True, progress=False)
    with pytest.raises(UserError, match="input"):
        vectorize_raster(mask, probs, probs=probs, overwrite=True, progress=False)
    os.link(mask, tmp_path / "link.gpkg")
    args = [str(mask), "-o", str(tmp_path / "link.gpkg"), "--overwrite", "-q"]
    res = subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli.app", "vectorize", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: --out: ") and "input" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--overwrite" not in res.stderr
    assert (_md5(mask), _md5(probs)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.gpkg", "link.gpkg", "probs.gpkg"]
