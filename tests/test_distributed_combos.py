"""One scene on a Dask cluster combined with areas of interest, STAC/remote scenes and --gsd (issue 14).

An area of interest and a STAC Item read over HTTP run on the cluster with the bytes of one
process; --gsd resampling is refused before any work (one line, exit 2) and --gsd native runs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from http_server import HttpServer
from test_distributed import OPTS, _cli, _same_file, _scene
from test_predict_stac import item_json, make_item, write_cog

from segnext_geo.errors import UserError
from segnext_geo.inference import predict_scene
from segnext_geo.inference.bands import band_rows, plan_bands
from segnext_geo.inference.distributed import DistributedOptions, predict_scene_distributed
from segnext_geo.inference.grid import Rect


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50) as c,
        Client(c) as cl,
    ):
        yield cl


def _bbox(scene: Path, c0: int, r0: int, c1: int, r1: int) -> tuple[float, float, float, float]:
    """The scene-CRS box of pixel columns ``[c0, c1)`` and rows ``[r0, r1)``, a quarter pixel inside."""
    with rasterio.open(scene) as src:
        t = src.transform
    x0, y1 = t @ (c0 + 0.25, r0 + 0.25)
    x1, y0 = t @ (c1 - 0.25, r1 - 0.25)
    return (x0, y0, x1, y1)


def test_bands_over_an_area_reach_into_it_and_partition_its_rows() -> None:
    region = Rect(70, 30, 171, 131)
    for n in (1, 2, 3, 6):
        grid, bands = plan_bands(256, 200, 64, 16, 4096, n, region)
        rows = [band_rows(b, region) for b in bands]
        assert rows[0].y0 == 0 and rows[-1].y1 == region.height and all(r.height > 0 for r in rows)
        assert all(a.y1 == b.y0 for a, b in itertools.pairwise(rows))
        kept = {(t.y, t.x) for t in grid.tiles}
        assert all(t.rect.y1 > region.y0 and t.rect.y0 < region.y1 for t in grid.tiles) and kept


@pytest.mark.parametrize("band_count", [2, 4])
def test_an_area_on_a_cluster_writes_the_bytes_of_one_process(
    tmp_path: Path, tiny_checkpoint: Path, client: object, band_count: int
) -> None:
    scene = _scene(tmp_path / "s.tif", h=256, w=200, seed=4)
    opts = OPTS.replace(bbox=_bbox(scene, 30, 70, 131, 171), bbox_crs="EPSG:32632")
    one = predict_scene(
        scene, tiny_checkpoint, tmp_path / "one.tif", opts, probs_out=tmp_path / "one_p.tif", progress=False
    )
    r = predict_scene_distributed(
        scene, tiny_checkpoint, tmp_path / "many.tif", opts, DistributedOptions(band_count=band_count),
        probs_out=tmp_path / "many_p.tif", progress=False, client=client,
    )  # fmt: skip
    assert r.window == one.window and one.window is not None and (one.window.width, one.window.height) == (101, 101)
    # a band that would end above the area is merged into the next one
    assert 2 <= r.bands <= band_count and (r.pixels, r.skipped_tiles) == (one.pixels, one.skipped_tiles)
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    _same_file(tmp_path / "one_p.tif", tmp_path / "many_p.tif")
    with rasterio.open(tmp_path / "many.tif") as src:
        assert (src.width, src.height) == (101, 101) and "AREA_WINDOW" in src.tags()
        classes = src.read(1)
    assert (classes == 255).any() and len(set(np.unique(classes)) - {255}) >= 2  # the nodata corner and classes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.tif", "many_p.tif", "one.tif", "one_p.tif", "s.tif"]


def test_a_stac_item_over_http_on_a_cluster_writes_the_bytes_of_one_process(
    tmp_path: Path, tiny_checkpoint: Path, client: object
) -> None:
    data = np.asarray(rasterio.open(_scene(tmp_path / "src.tif", h=192, w=160, seed=6)).read())
    data[data == 0] = 1  # no nodata: the COG has none
    cog = write_cog(tmp_path / "scene.tif", data).read_bytes()
    with HttpServer(files={"data/scene.tif": cog}) as server:
        item = item_json(make_item("S-1", {"visual": f"{server.url}/data/scene.tif"}))
        server.files["items/s-1.json"] = json.dumps(item).encode()
        url = f"{server.url}/items/s-1.json"
        predict_scene(url, tiny_checkpoint, tmp_path / "one.tif", OPTS, progress=False)
        r = predict_scene_distributed(
            url, tiny_checkpoint, tmp_path / "many.tif", OPTS, DistributedOptions(band_count=3),
            progress=False, client=client,
        )  # fmt: skip
    assert r.bands == 3
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    with rasterio.open(tmp_path / "many.tif") as src:
        assert src.tags()["STAC_ITEM_ID"] == "S-1"


def test_gsd_resampling_on_a_cluster_is_refused_before_any_work(tmp_path: Path, tiny_checkpoint: Path) -> None:
    scene = _scene(tmp_path / "s.tif", h=64, w=64)
    with pytest.raises(UserError, match=r"^--scheduler/--cluster, --gsd 0.25: resampling .*s\.tif.*--gsd native"):
        predict_scene_distributed(
            scene, tiny_checkpoint, tmp_path / "c.tif", OPTS.replace(gsd=0.25), DistributedOptions(cluster=2)
        )
    proc = _cli(scene, "-c", tiny_checkpoint, "-o", tmp_path / "c.tif", "--gsd", "0.25", "--cluster", "2", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --scheduler/--cluster, --gsd 0.25: resampling"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_gsd_native_runs_on_a_cluster(tmp_path: Path, tiny_checkpoint: Path, client: object) -> None:
    scene = _scene(tmp_path / "s.tif", h=128, w=96, seed=2)
    predict_scene(scene, tiny_checkpoint, tmp_path / "one.tif", OPTS, progress=False)
    r = predict_scene_distributed(
        scene, tiny_checkpoint, tmp_path / "many.tif", OPTS.replace(gsd="native"), DistributedOptions(band_count=2),
        progress=False, client=client,
    )  # fmt: skip
    assert "native" in r.gsd
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "many.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_batch_runs_a_big_scene_that_gsd_resamples_as_one_task(tmp_path: Path, client: object) -> None:
    import torch
    from rasterio.transform import from_origin
    from rasters import textured, write_tif

    from segnext_geo.batch import read_manifest, run_batch
    from segnext_geo.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("tiny", 3, class_names=["a", "b", "c"], gsd_m=0.5, gsd_note="test")
    ckpt = save_checkpoint(model, tmp_path / "m.pth")
    root = tmp_path / "in"
    root.mkdir()
    write_tif(root / "big.tif", textured((3, 96, 80), seed=8), transform=from_origin(500_000.0, 6e6, 1.0, 1.0))
    out = tmp_path / "out"
    s = run_batch([root], ckpt, out, client=client, mask=True, options=OPTS, progress=False, split_above=1000)
    assert (s.done, s.failed) == (1, 0), s.failures
    row = next(iter(read_manifest(out / "manifest.jsonl").values()))
    assert "split" not in row and "resampling to 0.5 m (2x)" in row["gsd"]
    predict_scene(root / "big.tif", ckpt, tmp_path / "one.tif", OPTS, progress=False)
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(out / "big.mask.tif") as b:
        assert np.array_equal(a.read(), b.read())
