"""The GSD of training data: measured from GeoTIFFs, documented for torchgeo datasets, recorded by ``train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasters import textured, write_tif
from test_data import _geotiff_sets, write_geotiffs

from segnext_geo.data.build import build_data
from segnext_geo.data.gsd import TORCHGEO_GSD, geotiff_gsd, image_files
from segnext_geo.data.torchgeo import NAMED
from segnext_geo.models import load_model
from segnext_geo.train.config import load_config

# UTM at 500 km E (the central meridian): the true ground size is the nominal pixel size / 0.9996
K0 = 0.9996


def _tif(path: Path, size_m: float, crs: str | None = "EPSG:32633", x0: float = 500_000.0) -> Path:
    return write_tif(path, textured((3, 16, 16)), crs=crs, transform=from_origin(x0, 5_200_000.0, size_m, size_m))


def test_geotiff_gsd_agrees_varies_or_is_unknown(tmp_path: Path) -> None:
    a, b = _tif(tmp_path / "a.tif", 0.50), _tif(tmp_path / "b.tif", 0.54)
    got = geotiff_gsd([a, b])
    assert got.gsd_m == pytest.approx((0.5 + 0.54) / 2 / K0, rel=1e-6) and "2 rasters" in got.note
    far = _tif(tmp_path / "c.tif", 0.7)
    varies = geotiff_gsd([a, far])
    assert varies.gsd_m is None and varies.note.startswith("varies: 0.5002-0.7003 m")
    nocrs = _tif(tmp_path / "d.tif", 0.5, crs=None)
    unknown = geotiff_gsd([a, nocrs])
    assert unknown.gsd_m is None and "d.tif has no CRS" in unknown.note
    (tmp_path / "sub").mkdir()
    _tif(tmp_path / "sub" / "e.tif", 0.5)
    assert image_files([tmp_path / "sub", a], "*.tif") == [tmp_path / "sub" / "e.tif", a]


def test_torchgeo_table_covers_the_named_datasets() -> None:
    assert set(TORCHGEO_GSD) == {spec.cls_name for spec in NAMED.values()}
    for name, g in TORCHGEO_GSD.items():
        assert g.note, name
        assert g.gsd_m is None or (0.01 < g.gsd_m < 10 and f"{g.gsd_m:g} m" in g.note), name
    assert TORCHGEO_GSD["Potsdam2D"].gsd_m == 0.05 and TORCHGEO_GSD["LoveDA"].gsd_m == 0.3


def test_synthetic_data_has_no_gsd() -> None:
    cfg = load_config(None, ["data.dataset=synthetic", "data.options={num_train: 2, num_val: 1, size: 64}"])
    bundle = build_data(cfg.data)
    assert bundle.gsd_m is None and "synthetic" in bundle.gsd_note


def test_train_on_geotiffs_records_the_gsd_and_info_prints_it(tmp_path: Path) -> None:
    from segnext_geo.train.fit import train

    root = write_geotiffs(tmp_path / "rasters")  # 0.5 m in UTM 33N, train and val
    cfg = load_config(None, _geotiff_sets(root, tmp_path))
    result = train(cfg)
    meta = load_model(result.best).meta
    # train at 500 km E, val at 520 km E: the scale factor differs by 2.5e-6 between them
    assert meta.gsd_m == pytest.approx(0.5 / K0, rel=1e-5) and meta.gsd_note.startswith("measured from 2 rasters")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "segnext_geo.cli.app", "info", str(result.best)]
    text = subprocess.run(cli, capture_output=True, text=True, env=env, check=True).stdout
    assert "GSD        : 0.5002 m (measured from 2 rasters (0.5002-0.5002 m))" in text.splitlines()
    as_json = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True, env=env, check=True).stdout)
    assert as_json["gsd_m"] == pytest.approx(0.5 / K0, rel=1e-5)
    assert np.isfinite(as_json["gsd_m"])
