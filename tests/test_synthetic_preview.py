"""The synthetic demo scenes and the preview picture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pngs import check_png

from segnext_geo.errors import UserError
from segnext_geo.preview import render_preview
from segnext_geo.raster.source import parse_bands
from segnext_geo.synthetic import DEMO_CLASSES, DEMO_PALETTE, synthesize, write_scene


def test_synthetic_scene_is_deterministic_and_has_every_class() -> None:
    a, b = synthesize(384, seed=3), synthesize(384, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.image, synthesize(384, seed=4).image)
    counts = np.bincount(a.truth.ravel(), minlength=256)
    assert all(counts[c] > 0 for c in range(len(DEMO_CLASSES)))
    nodata = a.truth == 255
    assert 0.01 < nodata.mean() < 0.4  # rotated footprint corners
    assert (a.image[:, nodata] == 0).all() and (a.image[:, ~nodata] >= 1).all()


def test_written_scene_is_georeferenced(tmp_path: Path) -> None:
    s = synthesize((200, 300), seed=1)
    write_scene(s, tmp_path / "img.tif", tmp_path / "truth.tif")
    with rasterio.open(tmp_path / "img.tif") as img, rasterio.open(tmp_path / "truth.tif") as t:
        assert img.crs.to_epsg() == 32632 and img.res == (0.5, 0.5) and img.nodata == 0
        assert (img.count, img.height, img.width) == (3, 200, 300)
        assert t.nodata == 255 and t.transform == img.transform
        assert np.array_equal(t.read(1), s.truth)
        assert t.colormap(1)[1][:3] == (230, 25, 75)


def test_preview_png_with_mask_and_truth(tmp_path: Path) -> None:
    s = synthesize(256, seed=2)
    write_scene(s, tmp_path / "img.tif", tmp_path / "truth.tif")
    out = render_preview(
        tmp_path / "img.tif",
        tmp_path / "p.png",
        mask=tmp_path / "truth.tif",
        truth=tmp_path / "truth.tif",
        max_size=200,
    )
    # two panels of 7 x 7 in (+ 0.8 in for the legend) at 100 dpi; the legend shows every class of
    # the truth in its palette colour (the overlays blend it with the scene, the legend does not)
    present = sorted(set(np.unique(s.truth).tolist()) - {0, 255})
    assert len(present) >= 3
    rgb = check_png(out, width=(1400, 1400), height=(780, 780), colours=[DEMO_PALETTE[c] for c in present])
    assert rgb[: 780 // 2, : 1400 // 2].std() > 10  # the scene panel is a picture, not a flat fill
    with pytest.raises(UserError, match="already exists"):
        render_preview(tmp_path / "img.tif", tmp_path / "p.png", mask=tmp_path / "truth.tif")


def test_preview_errors() -> None:
    with pytest.raises(UserError, match="no such file"):
        render_preview("/nonexistent.tif", "/tmp/x.png", mask="m.tif")
    assert parse_bands("4,3,2") == (4, 3, 2) and parse_bands(None) is None
    with pytest.raises(UserError, match="--bands"):
        parse_bands("a,b")
    with pytest.raises(UserError, match="--bands"):
        parse_bands("0,1,2")


def test_preview_cli(tmp_path: Path) -> None:
    s = synthesize(128, seed=5)
    write_scene(s, tmp_path / "img.tif", tmp_path / "truth.tif")
    cmd = [
        sys.executable,
        "-m",
        "segnext_geo.cli",
        "preview",
        str(tmp_path / "img.tif"),
        "--mask",
        str(tmp_path / "truth.tif"),
        "--out",
        str(tmp_path / "cli.png"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.png").stat().st_size > 1000
