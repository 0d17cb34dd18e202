"""STAC Items and remote COGs through predict_scene, the CLI and batch.

Items and ItemCollections are written here with pystac; their assets are COGs written here with
rasterio, read from disk or from a loopback HTTP server (tests/http_server.py) that counts the
bytes it serves. The model is a real SegNeXt-T (4 classes, seeded weights) on 64-px tiles.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
import torch
from http_server import HttpServer
from rasterio.transform import from_origin
from segnext_geo.cli.app import main

from segnext_geo.batch import read_manifest, run_batch
from segnext_geo.errors import UserError
from segnext_geo.inference import PredictOptions, predict_scene
from segnext_geo.models import build_model
from segnext_geo.vector import VectorOptions

UTM = "EPSG:32632"
WHEN = datetime(2023, 6, 1, 10, 20, 30, tzinfo=UTC)
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GRID = {"tile_size": 64, "overlap": 16, "device": "cpu", "workers": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


@pytest.fixture(scope="module")
def segnext() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", 4, class_names=["background", "building", "road", "water"]).eval()


def write_cog(path: Path, data: np.ndarray, origin: tuple[float, float] = (600_000.0, 5_000_000.0)) -> Path:
    """``data`` ``(3, H, W)`` uint8 as an RGB Cloud-Optimized GeoTIFF in UTM 32N at 10 m, 256-px tiles."""
    c, h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=w,
        height=h,
        count=c,
        dtype="uint8",
        crs=UTM,
        transform=from_origin(*origin, 10.0, 10.0),
        blocksize=256,
        compress="DEFLATE",
    ) as dst:
        dst.write(data)
    return path


def make_item(item_id: str, assets: dict[str, str], when: datetime = WHEN) -> pystac.Item:
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Polygon", "coordinates": [[[9, 45], [9.1, 45], [9.1, 45.1], [9, 45.1], [9, 45]]]},
        bbox=[9, 45, 9.1, 45.1],
        datetime=when,
        properties={},
    )
    for key, href in assets.items():
        roles = ["visual"] if key == "visual" else ["data"]
        item.add_asset(key, pystac.Asset(href=href, media_type=COG_TYPE, roles=roles))
    return item


def item_json(item: pystac.Item) -> dict[str, Any]:
    d = item.to_dict(transform_hrefs=False)
    d["links"] = []
    return d


def save(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(doc))
    return path


def collection(*items: pystac.Item) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [item_json(i) for i in items]}


@pytest.fixture(scope="module")
def cogs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small RGB COGs side by side (a.tif west, b.tif 5 km east) and a large one (big.tif)."""
    folder = tmp_path_factory.mktemp("cogs")
    rng = np.random.default_rng(7)
    write_cog(folder / "a.tif", rng.integers(0, 255, (3, 120, 150), dtype=np.uint8))
    write_cog(folder / "b.tif", rng.integers(0, 255, (3, 120, 150), dtype=np.uint8), origin=(605_000.0, 5_000_000.0))
    # incompressible pixels: the file's bytes are the pixels' bytes, so a window's share is measurable
    write_cog(folder / "big.tif", rng.integers(0, 255, (3, 2048, 2048), dtype=np.uint8))
    return folder


def _read(path: Path) -> tuple[np.ndarray, dict[str, str], Any]:
    with rasterio.open(path) as src:
        return src.read(1), src.tags(), src.transform


def test_item_file_tags_and_source(tmp_path: Path, cogs: Path, segnext: torch.nn.Module) -> None:
    item = save(item_json(make_item("scene-a", {"visual": str(cogs / "a.tif")})), tmp_path / "item.json")
    out = tmp_path / "polys.gpkg"
    vec = VectorOptions(keep_background=True)
    r = predict_scene(
        item, segnext, out, PredictOptions(**GRID, vector=vec), mask_out=tmp_path / "c.tif", progress=False
    )
    classes, tags, _ = _read(tmp_path / "c.tif")
    # the same pixels as predicting the COG itself
    predict_scene(cogs / "a.tif", segnext, tmp_path / "direct.tif", PredictOptions(**GRID), progress=False)
    assert np.array_equal(classes, _read(tmp_path / "direct.tif")[0])
    assert tags["STAC_ITEM_ID"] == "scene-a" and tags["STAC_DATETIME"] == "2023-06-01T10:20:30Z"
    assert tags["STAC_ASSETS"] == "visual" and tags["STAC_ITEM"] == str(item)
    df = pyogrio.read_dataframe(out)
    assert r.polygons == len(df) > 0 and set(df["source"]) == {"scene-a@2023-06-01T10:20:30Z"}


def test_asset_option_and_errors(
    tmp_path: Path,
    cogs: Path,
    segnext: torch.nn.Module,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    item = make_item("two", {"visual": str(cogs / "a.tif"), "other": str(cogs / "b.tif")})
    path = save(item_json(item), tmp_path / "two.json")
    predict_scene(path, segnext, tmp_path / "o.tif", PredictOptions(**GRID, asset="other"), progress=False)
    _, tags, transform = _read(tmp_path / "o.tif")
    assert tags["STAC_ASSETS"] == "other" and transform.c == 605_000.0
    with pytest.raises(UserError, match=r"--asset: STAC item two .* has no asset 'nir'; its assets: visual, other"):
        predict_scene(path, segnext, tmp_path / "x.tif", PredictOptions(**GRID, asset="nir"), progress=False)
    # through the CLI: one line, exit 2
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "segnext-geo",
            "predict",
            str(path),
            "-c",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "x.tif"),
            "--asset",
            "nir",
        ],
    )
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: --asset: STAC item two"), err
    coll = save(collection(item, make_item("three", {"visual": str(cogs / "b.tif")})), tmp_path / "coll.json")
    with pytest.raises(UserError, match=r"coll\.json: a STAC ItemCollection of 2 items; predict reads one Item"):
        predict_scene(coll, segnext, tmp_path / "x.tif", PredictOptions(**GRID), progress=False)
    assert not (tmp_path / "x.tif").exists()


def test_remote_item_with_an_area_reads_a_small_part_of_a_big_cog(
    tmp_path: Path, cogs: Path, segnext: torch.nn.Module
) -> None:
    big = (cogs / "big.tif").read_bytes()
    # the Item is served too, and names its asset relative to itself
    item = item_json(make_item("big-1", {"visual": "../data/big.tif"}))
    bbox = (600_000.0 + 10 * 900.5, 5_000_000.0 - 10 * 1010.0, 600_000.0 + 10 * 1000.0, 5_000_000.0 - 10 * 930.2)
    opts = PredictOptions(**GRID, bbox=bbox, bbox_crs=UTM)
    with HttpServer(files={"data/big.tif": big, "items/big-1.json": json.dumps(item).encode()}) as server:
        url = server.url_for("items/big-1.json")
        r = predict_scene(url, segnext, tmp_path / "remote.tif", opts, progress=False)
        served = server.bytes_sent["data/big.tif"]
        gets = server.gets["data/big.tif"]
    # the window is 80 x 100 px of 2048 x 2048: the tiles around it and the COG's header, not the file
    assert served < len(big) // 20, (served, len(big))
    assert gets < 10 and r.window is not None and (int(r.window.width), int(r.window.height)) == (100, 80)
    remote, tags, transform = _read(tmp_path / "remote.tif")
    assert tags["STAC_ITEM"] == url and tags["STAC_ITEM_ID"] == "big-1"
    # the same bytes as the same area of the local file
    predict_scene(cogs / "big.tif", segnext, tmp_path / "local.tif", opts, progress=False)
    local, _, local_transform = _read(tmp_path / "local.tif")
    assert np.array_equal(remote, local) and transform == local_transform


def test_remote_item_collection_in_batch_and_a_remote_url_in_the_cli(
    tmp_path: Path,
    cogs: Path,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {"a.tif": (cogs / "a.tif").read_bytes(), "b.tif": (cogs / "b.tif").read_bytes()}
    with HttpServer(files=files) as server:
        items = [
            make_item("west", {"visual": server.url_for("a.tif")}),
            make_item("east", {"visual": server.url_for("b.tif")}, when=datetime(2024, 1, 2, tzinfo=UTC)),
        ]
        coll = save(collection(*items), tmp_path / "items.json")
        # a lon/lat box over the western scene only
        opts = PredictOptions(**GRID, batch_size=2, bbox=_ll_box(600_200.0, 4_999_100.0, 600_900.0, 4_999_700.0))
        out = tmp_path / "out"
        s = run_batch([coll], tiny_checkpoint, out, workers=1, mask=True, options=opts, progress=False)
        assert (s.done, s.outside, s.failed) == (1, 1, 0)
        rows = read_manifest(out / "manifest.jsonl")
        west, east = rows[f"{coll}#west"], rows[f"{coll}#east"]
        assert west["status"] == "done" and west["item"] == "west" and west["datetime"] == "2023-06-01T10:20:30Z"
        assert east["status"] == "skipped" and east["reason"] == "outside the area of interest"
        assert east["outputs"] == {} and east["item"] == "east" and "--bbox" in east["detail"]
        assert Path(west["outputs"]["vector"]) == out / "west.gpkg" and not (out / "east.gpkg").exists()
        with rasterio.open(out / "west.mask.tif") as src:
            assert src.tags()["STAC_ITEM_ID"] == "west" and src.width < 150 and src.height < 120
        served = server.total_bytes
        # a rerun redoes neither the done nor the skipped item
        s2 = run_batch([coll], tiny_checkpoint, out, workers=1, mask=True, options=opts, progress=False)
        assert (s2.done, s2.skipped, s2.failed, s2.outside) == (0, 2, 0, 0)
        assert server.total_bytes == served
        assert read_manifest(out / "manifest.jsonl")[f"{coll}#east"]["reason"] == "outside the area of interest"
        # predict on the URL of a COG (no STAC), through the CLI
        args = ["predict", server.url_for("b.tif"), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "b.tif")]
        monkeypatch.setattr(sys, "argv", ["segnext-geo", *args, "--tile-size", "64", "--overlap", "16", "-q"])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 0, capsys.readouterr().err
    with rasterio.open(tmp_path / "b.tif") as src:
        assert (src.width, src.height) == (150, 120) and src.transform.c == 605_000.0


def _ll_box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """A lon/lat box around a UTM rectangle (its corners' extremes)."""
    from pyproj import Transformer

    tr = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lons, lats = tr.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    return min(lons), min(lats), max(lons), max(lats)


def test_batch_with_an_aoi_file_given_relative_to_the_working_folder(
    tmp_path: Path, cogs: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geopandas as gpd
    import shapely

    # plain rasters (no STAC); the area: a polygon over part of a.tif, in lon/lat, named relative to the cwd
    here = tmp_path / "work"
    here.mkdir()
    gpd.GeoDataFrame(
        geometry=[shapely.box(*_ll_box(600_100.0, 4_999_400.0, 600_600.0, 4_999_900.0))], crs=4326
    ).to_file(here / "zone.gpkg")
    monkeypatch.chdir(here)
    opts = PredictOptions(**GRID, batch_size=2, aoi="zone.gpkg")
    out = tmp_path / "out"
    s = run_batch(
        [cogs / "a.tif", cogs / "b.tif"], tiny_checkpoint, out, workers=1, mask=True, options=opts, progress=False
    )
    assert (s.done, s.outside, s.failed) == (1, 1, 0), s.failures
    rows = read_manifest(out / "manifest.jsonl")
    assert rows[str(cogs / "b.tif")]["reason"] == "outside the area of interest"
    with rasterio.open(out / "a.mask.tif") as src:
        assert src.tags()["AREA_OF_INTEREST"] == f"--aoi {here / 'zone.gpkg'}"
        assert 50 <= src.width <= 53 and 50 <= src.height <= 53 and src.transform.c <= 600_100.0
