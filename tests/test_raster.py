"""Windowed reading (bands, nodata, masks, alpha), scene-wide normalisation and COG writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasters import corrupt_middle_block, textured, write_tif

from segnext_geo.errors import UserError
from segnext_geo.raster import (
    RasterSpec,
    SceneSource,
    StreamedGeoTIFF,
    class_colormap,
    compute_normalization,
    open_scene,
    parse_bands,
)
from segnext_geo.raster.normalize import sample_windows


def test_parse_bands() -> None:
    assert parse_bands("3, 2,1") == (3, 2, 1)
    assert parse_bands([4, 1]) == (4, 1)
    assert parse_bands(None) is None
    with pytest.raises(UserError, match="--bands: 'a,b' is not a comma-separated list"):
        parse_bands("a,b")
    with pytest.raises(UserError, match="--bands: band numbers start at 1, got 0"):
        parse_bands("0,1,2")


def test_open_scene_errors(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 50)))
    with pytest.raises(UserError, match=r"nope\.tif: no such file"):
        open_scene(tmp_path / "nope.tif", None, (1, 2, 3), 3)
    with pytest.raises(UserError, match="is a directory"):
        open_scene(tmp_path, None, (1, 2, 3), 3)
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(UserError, match=r"notes\.tif: not a raster GDAL can read"):
        open_scene(tmp_path / "notes.tif", None, (1, 2, 3), 3)
    with pytest.raises(UserError, match=r"--bands: band 5 does not exist in .*s\.tif \(it has 3 band"):
        open_scene(scene, (1, 2, 5), (1, 2, 3), 3)
    with pytest.raises(UserError, match=r"--bands: the model takes 3 band\(s\), got 2"):
        open_scene(scene, (1, 2), (1, 2, 3), 3)
    with pytest.raises(UserError, match=r"has 3 band\(s\) but the model reads bands 1,2,3,4"):
        open_scene(scene, None, (1, 2, 3, 4), 4)
    info = open_scene(scene, (3, 1, 2), (1, 2, 3), 3)
    assert info.bands == (3, 1, 2) and (info.height, info.width) == (40, 50) and info.mask_kind == "none"


def test_band_selection_and_order(tmp_path: Path) -> None:
    data = np.stack([np.full((8, 9), v, np.uint8) for v in (10, 20, 30, 40)])
    scene = write_tif(tmp_path / "s.tif", data, photometric="MINISBLACK")  # 4 plain bands, not RGBA
    with SceneSource(open_scene(scene, (4, 1), (1, 2), 2)) as src:
        got, valid = src.read(Window(2, 1, 5, 4))
    assert got.shape == (2, 4, 5) and valid is None
    assert (got[0] == 40).all() and (got[1] == 10).all()


def test_nodata_is_per_band_and_a_pixel_needs_one_valid_band(tmp_path: Path) -> None:
    data = textured((3, 20, 30), "uint16")
    data[:, :5] = 0  # all bands nodata: invalid pixels
    data[1, 10:12] = 0  # one band nodata: the pixel stays valid, the band value is masked
    scene = write_tif(tmp_path / "s.tif", data, nodata=0)
    info = open_scene(scene, None, (1, 2, 3), 3)
    assert info.mask_kind == "nodata"
    with SceneSource(info) as src:
        _, band_valid = src.read(Window(0, 0, 30, 20))
    assert band_valid is not None
    valid = band_valid.any(axis=0)
    assert not valid[:5].any() and valid[5:].all()
    assert not band_valid[1, 10:12].any() and band_valid[0, 10:12].all()


def test_internal_mask_alpha_and_nan(tmp_path: Path) -> None:
    data = textured((3, 16, 16))
    mask = np.ones((16, 16), bool)
    mask[:, :4] = False
    with SceneSource(open_scene(write_tif(tmp_path / "m.tif", data, mask=mask), None, (1, 2, 3), 3)) as src:
        assert src.info.mask_kind == "dataset"
        _, v = src.read(Window(0, 0, 16, 16))
    assert v is not None and (v.any(axis=0) == mask).all()

    alpha = np.where(mask, 255, 0).astype(np.uint8)
    rgba = write_tif(tmp_path / "a.tif", np.concatenate([data, alpha[None]]), photometric="RGB", alpha="YES")
    with SceneSource(open_scene(rgba, None, (1, 2, 3), 3)) as src:
        assert src.info.mask_kind == "dataset"
        _, v = src.read(Window(0, 0, 16, 16))
    assert v is not None and (v.any(axis=0) == mask).all()

    f = textured((2, 16, 16), "float32")
    f[0, 3, 3] = np.nan
    f[:, 5, 5] = np.inf
    with SceneSource(open_scene(write_tif(tmp_path / "f.tif", f), None, (1, 2), 2)) as src:
        _, v = src.read(Window(0, 0, 16, 16))
    assert v is not None and not v[0, 3, 3] and v[1, 3, 3] and not v[:, 5, 5].any() and v.sum() == 2 * 256 - 3


def test_truncated_tiff_read_is_a_one_line_error(tmp_path: Path) -> None:
    good = write_tif(tmp_path / "g.tif", textured((3, 128, 128)))
    data = good.read_bytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:  # found when the scene is opened, before any work
        open_scene(bad, None, (1, 2, 3), 3)
    assert "bad.tif: cannot read its last block (corrupt or truncated file?)" in str(err.value)
    assert "\n" not in str(err.value)


def test_uint8_uses_the_checkpoint_statistics(tmp_path: Path) -> None:
    data = textured((3, 32, 32))
    with SceneSource(open_scene(write_tif(tmp_path / "s.tif", data), None, (1, 2, 3), 3)) as src:
        norm = compute_normalization(src, (100.0, 110.0, 120.0), (50.0, 55.0, 60.0))
    assert norm.method == "meanstd"
    got = norm.apply(data)
    want = (data.astype(np.float64) - np.array([100, 110, 120])[:, None, None]) / np.array([50, 55, 60])[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_uint16_stretch_is_scene_wide_and_masked_values_become_the_mean(tmp_path: Path) -> None:
    data = textured((2, 120, 90), "uint16")
    data[:, :10] = 0
    with SceneSource(open_scene(write_tif(tmp_path / "s.tif", data, nodata=0), None, (1, 2), 2)) as src:
        norm = compute_normalization(src, (127.5, 127.5), (50.0, 50.0))
        raw, band_valid = src.read(Window(0, 0, 90, 120))
    assert norm.method == "percentile" and norm.low is not None and norm.high is not None
    for b in range(2):  # a small scene is read whole: the percentiles are exact, nodata excluded
        lo, hi = np.percentile(data[b, 10:].astype(np.float64), (2, 98))
        assert norm.low[b] == pytest.approx(lo) and norm.high[b] == pytest.approx(hi)
    x = norm.apply(raw, band_valid)
    assert (x[:, :10] == 0).all()  # masked input = the band's training mean
    assert x.min() == pytest.approx(-127.5 / 50) and x.max() == pytest.approx(127.5 / 50)  # clipped to 0..255


def test_stretch_of_a_large_scene_comes_from_overviews_or_a_fixed_sample(tmp_path: Path) -> None:
    data = textured((1, 1100, 1000), "float32", seed=3)
    plain = write_tif(tmp_path / "p.tif", data, tiled=True, blockxsize=256, blockysize=256)
    with_ov = write_tif(tmp_path / "o.tif", data, tiled=True, blockxsize=256, blockysize=256, overviews=[2, 4])
    full = np.percentile(data.astype(np.float64), (2, 98))
    results = []
    for path in (plain, with_ov, plain):
        with SceneSource(open_scene(path, None, (1,), 1)) as src:
            assert src.info.has_overviews == (path == with_ov)
            norm = compute_normalization(src, (0.0,), (1.0,))
        assert norm.low is not None and norm.high is not None
        results.append((norm.low[0], norm.high[0]))
        assert norm.low[0] == pytest.approx(full[0], abs=0.02) and norm.high[0] == pytest.approx(full[1], abs=0.02)
    assert results[0] == results[2]  # deterministic sample
    wins = sample_windows(1100, 1000)
    assert sum(w.width * w.height for w in wins) <= 1 << 20 and len(wins) > 4
    assert all(w.row_off + w.height <= 1100 and w.col_off + w.width <= 1000 for w in wins)


def test_streamed_geotiff_is_a_cog_with_overviews_colours_and_tags(tmp_path: Path) -> None:
    from affine import Affine

    transform = Affine(2.0, 0.0, 300_000.0, 0.0, -2.0, 5_000_000.0)
    spec = RasterSpec(
        width=1300,
        height=1100,
        count=1,
        crs=rasterio.crs.CRS.from_epsg(32633),
        transform=transform,
        colormap=class_colormap([(10, 20, 30), (40, 50, 60)]),
        tags={"class_names": json.dumps(["a", "b"])},
        descriptions=("class",),
    )
    out = tmp_path / "c.tif"
    w = StreamedGeoTIFF(out, tmp_path / ".scratch.tif", spec)
    full = np.zeros((1100, 1300), np.uint8)
    rng = np.random.default_rng(0)
    for y0 in range(0, 1100, 300):  # unaligned windows, like super-tile cores
        for x0 in range(0, 1300, 700):
            block = rng.integers(0, 2, (min(300, 1100 - y0), min(700, 1300 - x0))).astype(np.uint8)
            full[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block
            w.write(block[None], Window(x0, y0, block.shape[1], block.shape[0]))
    w.finish()
    w.close()
    assert not (tmp_path / ".scratch.tif").exists()
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2, 4] and src.nodata == 255 and src.dtypes[0] == "uint8"
        assert src.profile["tiled"] and src.compression.value == "DEFLATE"
        assert src.crs.to_epsg() == 32633 and src.transform == transform
        assert src.colormap(1)[1] == (40, 50, 60, 255) and src.colormap(1)[255] == (0, 0, 0, 0)
        assert json.loads(src.tags()["class_names"]) == ["a", "b"]
        assert (src.read(1) == full).all()


def test_probability_raster_keeps_its_mask(tmp_path: Path) -> None:
    from affine import Affine

    t = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 48.0)
    spec = RasterSpec(width=64, height=48, count=3, crs=None, transform=t, nodata=None, mask=True)
    out = tmp_path / "p.tif"
    w = StreamedGeoTIFF(out, tmp_path / ".s.tif", spec)
    valid = np.ones((48, 64), bool)
    valid[:, :10] = False
    w.write(np.full((3, 48, 64), 200, np.uint8), Window(0, 0, 64, 48), valid)
    w.finish()
    with rasterio.open(out) as src:
        assert src.count == 3 and (src.read_masks(1) > 0).tolist() == valid.tolist()


def test_corrupt_block_read_is_a_one_line_error(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "c.tif", textured((3, 256, 256)), tiled=True, blockxsize=64, blockysize=64, compress="deflate"
    )
    corrupt_middle_block(path)
    with SceneSource(open_scene(path, None, (1, 2, 3), 3)) as src:  # header and last block are fine
        src.read(Window(128, 128, 64, 64))
        with pytest.raises(UserError) as err:
            src.read(Window(32, 32, 64, 64))
    assert "c.tif: read error at rows 32-96, cols 32-96 (corrupt or truncated file?)" in str(err.value)
    assert "\n" not in str(err.value)
