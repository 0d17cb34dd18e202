"""Validity of scene pixels follows GDAL's masks over the selected bands, whatever their order.

GDAL's mask model, per band: a per-dataset mask (internal or ``.msk``) wins, then the band's
nodata value, then an alpha band; plus NaN/inf in float bands. These tests compare with the
masks written here (alpha, ``.msk``) or with GDAL's own ``read_masks``; they also cover the
nodata override, the stretch statistics, band choice by colour, and ``/vsimem/``/``/vsizip/``.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile
from rasterio.windows import Window
from rasters import textured, write_tif

from segnext_geo.errors import UserError
from segnext_geo.raster import SceneSource, compute_normalization, open_scene


def valid_of(path: str | Path, bands: tuple[int, ...], nodata: float | None = None, default=(1, 2, 3)) -> np.ndarray:
    """The pixel validity SceneSource reads for ``bands`` (whole scene)."""
    info = open_scene(path, bands, default, len(bands), **({} if nodata is None else {"nodata": nodata}))
    with SceneSource(info) as src:
        data, band_valid = src.read(Window(0, 0, info.width, info.height))
    return np.ones(data.shape[1:], bool) if band_valid is None else band_valid.any(axis=0)


def write_msk(path: Path, data: np.ndarray, mask: np.ndarray, **profile: object) -> Path:
    """A GeoTIFF with an external ``.msk`` sidecar (as GDAL writes with GDAL_TIFF_INTERNAL_MASK=NO)."""
    c, h, w = data.shape
    prof = dict(driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name, crs="EPSG:32632")
    prof.update(transform=rasterio.transform.from_origin(500_000.0, 6_000_000.0, 0.5, 0.5), **profile)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        dst.write_mask(mask.astype(np.uint8) * 255)
    assert Path(f"{path}.msk").exists()
    return path


@pytest.fixture
def alpha_mask() -> np.ndarray:
    m = np.ones((16, 20), bool)
    m[:, :5] = False
    m[12:, 10:] = False
    return m


@pytest.mark.parametrize("bands", [(1, 2, 3), (3, 2, 1), (4, 1, 2), (2, 4, 1), (4, 3), (4,)])
def test_alpha_is_honoured_whatever_the_band_order(tmp_path: Path, alpha_mask: np.ndarray, bands: tuple) -> None:
    """Issue 11 item 1: the mask came from the first selected band only, so --bands 4,1,2 lost alpha."""
    rgb = textured((3, 16, 20))
    alpha = np.where(alpha_mask, 255, 0).astype(np.uint8)
    rgba = write_tif(tmp_path / "a.tif", np.concatenate([rgb, alpha[None]]), photometric="RGB", alpha="YES")
    with rasterio.open(rgba) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    assert (valid_of(rgba, bands) == alpha_mask).all()


def test_predict_writes_nodata_exactly_where_the_alpha_is_zero(tmp_path: Path, alpha_mask: np.ndarray) -> None:
    from rasters import PixelLinear, pixel_meta

    from segnext_geo.inference import predict_scene

    rgb = textured((3, 16, 20))
    alpha = np.where(alpha_mask, 255, 0).astype(np.uint8)
    rgba = write_tif(tmp_path / "a.tif", np.concatenate([rgb, alpha[None]]), photometric="RGB", alpha="YES")
    out = tmp_path / "c.tif"
    predict_scene(
        rgba, PixelLinear(3, 4), out, meta=pixel_meta(4), bands=(4, 1, 2), tile_size=64, overlap=0, progress=False
    )
    with rasterio.open(out) as dst:
        assert ((dst.read(1) == 255) == ~alpha_mask).all()


@pytest.mark.parametrize("bands", [(1, 2, 3), (3, 1, 2), (2,)])
def test_a_msk_sidecar_wins_over_the_nodata_value_as_in_gdal(tmp_path: Path, bands: tuple) -> None:
    data = textured((3, 12, 14))
    data[:, 0, 7:] = 9  # equal to the nodata value, but the .msk says valid: GDAL says valid
    mask = np.ones((12, 14), bool)
    mask[5:, :3] = False
    path = write_msk(tmp_path / "m.tif", data, mask, nodata=9)
    with rasterio.open(path) as src:
        gdal = np.logical_or.reduce([src.read_masks(b) > 0 for b in bands])
    assert (gdal == mask).all()
    assert (valid_of(path, bands) == mask).all()


def test_nodata_validity_is_over_the_selected_bands(tmp_path: Path) -> None:
    data = textured((3, 10, 10), "uint16")
    data[0:2, 2] = 0  # bands 1 and 2 nodata in row 2: invalid when only they are selected
    data[:, 5] = 0  # every band nodata in row 5
    path = write_tif(tmp_path / "n.tif", data, nodata=0)
    for bands in [(1, 2), (2, 1), (1, 2, 3), (3,), (3, 1)]:
        with rasterio.open(path) as src:
            gdal = np.logical_or.reduce([src.read_masks(b) > 0 for b in bands])
        got = valid_of(path, bands)
        assert (got == gdal).all(), bands
        assert got[2].any() == (3 in bands) and not got[5].any()


def test_nan_is_invalid_even_without_a_nodata_value(tmp_path: Path) -> None:
    f = textured((2, 8, 8), "float32")
    f[:, 1, 1] = np.nan  # every band NaN: invalid pixel
    f[0, 2, 2] = np.nan  # one band NaN: the pixel stays valid (the value is filled)
    f[:, 3, 3] = -np.inf
    for nodata in (None, -9999.0):
        path = write_tif(tmp_path / f"f{nodata}.tif", f, nodata=nodata)
        v = valid_of(path, (1, 2))
        assert not v[1, 1] and v[2, 2] and not v[3, 3] and v.sum() == 64 - 2


# -- --nodata override -------------------------------------------------------------------------------------
def collar_scene(tmp_path: Path, nodata: float | None = None) -> tuple[Path, np.ndarray]:
    data = textured((3, 60, 50), "uint16", seed=4)
    collar = np.zeros((60, 50), bool)
    collar[:, :12] = True  # an undeclared 0 collar (24 % of the pixels)
    collar[50:, :] = True
    data[:, collar] = 0
    return write_tif(tmp_path / "landsat.tif", data, nodata=nodata), collar


def test_a_nodata_override_masks_an_undeclared_collar_and_leaves_the_stretch(tmp_path: Path) -> None:
    path, collar = collar_scene(tmp_path)
    assert valid_of(path, (1, 2, 3)).all()  # as the file says: no nodata
    assert (valid_of(path, (1, 2, 3), nodata=0) == ~collar).all()
    with rasterio.open(path) as src:
        data = src.read()
    for nodata, expect_low in ((None, 0.0), (0, None)):
        info = open_scene(path, None, (1, 2, 3), 3, nodata=nodata)
        with SceneSource(info) as src:
            norm = compute_normalization(src, (127.5,) * 3, (50.0,) * 3)
        assert norm.low is not None and norm.high is not None
        for b in range(3):
            inside = data[b][~collar].astype(np.float64)
            lo, hi = np.percentile(inside if nodata is not None else data[b].ravel(), (2, 98))
            assert norm.low[b] == pytest.approx(lo) and norm.high[b] == pytest.approx(hi)
            if expect_low is not None:
                assert norm.low[b] == expect_low  # the collar drags the stretch down to 0
            else:
                assert norm.low[b] > 150  # the texture starts at 200


def test_a_nodata_override_replaces_the_files_value_and_keeps_masks(tmp_path: Path) -> None:
    path, collar = collar_scene(tmp_path, nodata=7)
    data = rasterio.open(path).read()
    data[:, 20, 20:25] = 7
    path = write_tif(tmp_path / "seven.tif", data, nodata=7)
    v = valid_of(path, (1, 2, 3), nodata=0)
    assert v[20, 20:25].all() and (v == ~collar).all()  # 7 is data now, 0 is nodata
    mask = np.ones(collar.shape, bool)
    mask[30:35, 30:35] = False
    msk = write_msk(tmp_path / "msk.tif", data, mask)
    assert (valid_of(msk, (1, 2, 3), nodata=0) == (~collar & mask)).all()  # the .msk still applies


@pytest.mark.parametrize(("dtype", "value"), [("uint8", -1), ("uint8", 256), ("uint16", 2.5), ("int16", float("nan"))])
def test_a_nodata_override_the_data_type_cannot_hold_is_refused(tmp_path: Path, dtype: str, value: float) -> None:
    path = write_tif(tmp_path / "s.tif", np.zeros((3, 8, 8), dtype))
    with pytest.raises(UserError) as e:
        open_scene(path, None, (1, 2, 3), 3, nodata=value)
    assert str(e.value).startswith("--nodata: ") and "s.tif" in str(e.value) and dtype in str(e.value)


# -- band choice ---------------------------------------------------------------------------------------------
def six_bands(tmp_path: Path, name: str) -> Path:
    data = np.stack([np.full((8, 8), 10 * (b + 1), np.uint16) for b in range(6)])
    return write_tif(tmp_path / name, data, photometric="MINISBLACK")


def test_colour_interpretation_picks_red_green_blue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = six_bands(tmp_path, "ci.tif")
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red] + [ColorInterp.undefined] * 3
    with caplog.at_level(logging.WARNING):
        info = open_scene(path, None, (1, 2, 3), 3)
    assert info.bands == (3, 2, 1) and info.notes == () and not caplog.records


def test_band_descriptions_pick_red_green_blue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = six_bands(tmp_path, "desc.tif")
    with rasterio.open(path, "r+") as dst:
        for b, d in enumerate(["Blue", "Green", "Red", "NIR", "SWIR 1", "Red edge"], start=1):
            dst.set_band_description(b, d)
    with caplog.at_level(logging.WARNING):
        info = open_scene(path, None, (1, 2, 3), 3)
    assert info.bands == (3, 2, 1) and not caplog.records


def test_without_colour_information_the_choice_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = six_bands(tmp_path, "plain.tif")
    with caplog.at_level(logging.WARNING):
        info = open_scene(path, None, (1, 2, 3), 3)
    assert info.bands == (1, 2, 3)
    assert len(caplog.records) == 1 and info.notes == (caplog.records[0].getMessage(),)
    msg = info.notes[0]
    assert msg.startswith(f"{path}: ") and "6 bands" in msg and "1,2,3" in msg and "--bands" in msg and "\n" not in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the user's choice, the checkpoint's own bands, or just 3 bands: silent
        assert open_scene(path, (4, 3, 2), (1, 2, 3), 3).bands == (4, 3, 2)
        assert open_scene(path, None, (5, 4, 3), 3).bands == (5, 4, 3)
        assert open_scene(write_tif(tmp_path / "three.tif", textured((3, 8, 8))), None, (1, 2, 3), 3).notes == ()
    assert not caplog.records


# -- virtual file systems ------------------------------------------------------------------------------------
def test_vsizip_and_vsimem_scenes_keep_their_masks(tmp_path: Path) -> None:
    data = textured((3, 12, 12))
    mask = np.ones((12, 12), bool)
    mask[:4] = False
    path = write_msk(tmp_path / "z.tif", data, mask)
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(path, "dir/z.tif")
        z.write(f"{path}.msk", "dir/z.tif.msk")
    assert (valid_of(f"/vsizip/{archive}/dir/z.tif", (1, 2, 3)) == mask).all()
    with MemoryFile(ext=".tif") as mem:
        profile = dict(driver="GTiff", width=12, height=12, count=4, dtype="uint8", photometric="RGB", alpha="YES")
        tf = rasterio.transform.from_origin(500_000.0, 6_000_000.0, 0.5, 0.5)
        with mem.open(crs="EPSG:32632", transform=tf, **profile) as d:
            d.write(np.concatenate([data, (mask * 255).astype(np.uint8)[None]]))
        assert mem.name.startswith("/vsimem/")
        assert (valid_of(mem.name, (4, 1, 2)) == mask).all()


def test_an_empty_scene_is_called_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.tif: is empty \(0 bytes\)"):
        open_scene(tmp_path / "empty.tif", None, (1, 2, 3), 3)
