"""The download-free demo, end to end on a small scene with a short budget."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pngs import check_png

from segnext_geo.demo import run_demo
from segnext_geo.errors import UserError
from segnext_geo.synthetic import DEMO_PALETTE


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = run_demo(out, size=384, minutes=0.1, seed=1, quiet=True, steps=10, chip=64, batch=4)
    for p in (r.scene, r.truth, r.classes, r.polygons, r.preview, r.checkpoint):
        assert p.exists(), p
    with rasterio.open(r.scene) as s, rasterio.open(r.classes) as c, rasterio.open(r.truth) as t:
        assert c.crs == s.crs and c.transform == s.transform and (c.height, c.width) == (384, 384)
        cls, truth = c.read(1), t.read(1)
    assert ((cls == 255) == (truth == 255)).all()  # nodata corners carried through
    # the reported IoU is the IoU of the written rasters
    valid = truth != 255
    water = ((cls == 3) & (truth == 3) & valid).sum() / (((cls == 3) | (truth == 3)) & valid).sum()
    assert r.iou["water"] == pytest.approx(water)
    assert r.iou["water"] > 0.5  # the largest, most distinct class is learned within a few steps
    gdf = gpd.read_file(r.polygons)
    assert len(gdf) == r.polygon_count > 0 and gdf.crs == "EPSG:32632"
    assert set(gdf["class_name"]) <= {"building", "road", "water", "vehicle", "boat"}
    scores = json.loads((out / "scores.json").read_text())
    assert scores["mIoU"] == pytest.approx(r.miou) and np.isfinite(r.miou)
    # the scene with its polygons beside the truth (two 7-inch panels at 100 dpi, a legend row);
    # every predicted and true class appears in the legend in its palette colour
    present = sorted((set(np.unique(truth).tolist()) | set(gdf["class_id"].tolist())) - {0, 255})
    check_png(r.preview, width=(1400, 1400), height=(780, 780), colours=[DEMO_PALETTE[c] for c in present])
    with pytest.raises(UserError, match="not empty"):
        run_demo(out, size=384, minutes=0.1, quiet=True)
