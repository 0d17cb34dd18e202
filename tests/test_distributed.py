"""One scene over a real Dask cluster (issue 14, part 1): bands, halo tiles, output identical to one process.

Clusters here are real: a 2-worker LocalCluster (processes), a separately started ``dask scheduler``
and ``dask worker``, and a worker killed with SIGKILL while it computes a band.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from rasters import textured, write_tif
from test_batch import _free_port, _write_scene

from segnext_geo.batch import read_manifest, run_batch
from segnext_geo.errors import UserError
from segnext_geo.inference import PredictOptions, TileGrid, predict_scene
from segnext_geo.inference.bands import plan_bands
from segnext_geo.inference.distributed import DistributedOptions, auto_band_count, predict_scene_distributed

OPTS = PredictOptions(tile_size=64, overlap=16, batch_size=2, device="cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _scene(path: Path, h: int = 192, w: int = 160, seed: int = 0) -> Path:
    """Texture with bright blocks (structure for the model) and a nodata corner."""
    data = textured((3, h, w), seed=seed)
    data[:, h // 5 : h // 3, w // 4 : w // 2] = 230
    data[:, h // 2 :, : w // 6] = 0  # nodata 0 in every band
    return write_tif(path, data, nodata=0)


def _same_file(a: Path, b: Path) -> None:
    """Identical pixels, mask, tags, colour table, profile -- and identical bytes."""
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert np.array_equal(x.read(), y.read())
        assert np.array_equal(x.dataset_mask(), y.dataset_mask())
        assert x.tags() == y.tags() and x.profile == y.profile and x.overviews(1) == y.overviews(1)
        if x.nodata == 255:  # a class raster
            assert x.colormap(1) == y.colormap(1)
    assert a.read_bytes() == b.read_bytes()


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50) as c,
        Client(c) as cl,
    ):
        yield cl


def test_bands_partition_the_scene_and_compute_exactly_the_tiles_that_touch_them() -> None:
    for h, w, tile, overlap, ws, n in [
        (320, 256, 64, 16, 4096, 3),
        (8192, 8192, 1024, 256, 1800, 2),
        (700, 90, 96, 40, 200, 4),
    ]:
        grid, bands = plan_bands(h, w, tile, overlap, ws, n)
        ref = TileGrid(h, w, tile, overlap, ws)
        assert sorted((t.y, t.x) for t in grid.tiles) == sorted((t.y, t.x) for t in ref.tiles)  # the same tiles
        assert len(bands) == n and bands[0].rect.y0 == 0 and bands[-1].rect.y1 == h
        for a, b in itertools.pairwise(bands):
            assert a.rect.y1 == b.rect.y0  # contiguous, no gap, no overlap
        for band in bands:
            touching = [t.index for t in grid.tiles if t.rect.y0 < band.rect.y1 and t.rect.y1 > band.rect.y0]
            assert list(band.tiles) == touching  # every tile a single process blends into these rows
            above = [i for i in touching if grid.tiles[i].supertile < band.supertiles[0]]
            assert band.halo == len(above)
            assert all(s.core.y1 <= band.rect.y1 for s in grid.supertiles[band.supertiles[0] : band.supertiles[1]])
    # SegNeXt defaults: tile 1024, overlap 256 -> one tile row (11 tiles of an 8192-wide scene) per band edge
    _, bands = plan_bands(8192, 8192, 1024, 256, 1800, 2)
    assert [b.halo for b in bands] == [0, 11]
    assert auto_band_count(8192, 1024, 256, 2) == 2 and auto_band_count(100_000, 1024, 256, 8) == 32
    assert auto_band_count(64, 64, 16, 4) == 1


def test_two_workers_write_the_bytes_of_one_process(tmp_path: Path, tiny_checkpoint: Path, client: object) -> None:
    scene = _scene(tmp_path / "s.tif")
    one = predict_scene(
        scene, tiny_checkpoint, tmp_path / "one.tif", OPTS, probs_out=tmp_path / "one_p.tif", progress=False
    )
    r = predict_scene_distributed(
        scene, tiny_checkpoint, tmp_path / "many.tif", OPTS, DistributedOptions(band_count=4),
        probs_out=tmp_path / "many_p.tif", progress=False, client=client,
    )  # fmt: skip
    assert r.bands == 4 and r.halo_tiles == 3 * 3 and r.tiles == one.tiles == 12  # 4 x 3 tiles
    assert len(set(r.band_workers or [])) == 2  # both workers computed bands
    assert (r.pixels, r.skipped_tiles) == (one.pixels, one.skipped_tiles)
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    _same_file(tmp_path / "one_p.tif", tmp_path / "many_p.tif")
    with rasterio.open(tmp_path / "many.tif") as src:
        classes = src.read(1)
    assert (classes == 255).any() and len(set(np.unique(classes)) - {255}) >= 2  # nodata and real classes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.tif", "many_p.tif", "one.tif", "one_p.tif", "s.tif"]


@pytest.fixture
def near_tie_checkpoint(tmp_path: Path) -> Path:
    """A model whose classifier is scaled down: the 4 class probabilities differ by < 1e-3."""
    from segnext_geo.models import build_model, save_checkpoint

    torch.manual_seed(1)
    model = build_model("tiny", 4, class_names=["a", "b", "c", "d"])
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(1e-3)
        model.decode_head.conv_seg.bias.zero_()
    path = tmp_path / "near_tie.pth"
    save_checkpoint(model, path)
    return path


def test_near_ties_and_polygons_are_identical(tmp_path: Path, near_tie_checkpoint: Path, client: object) -> None:
    scene = _scene(tmp_path / "s.tif", seed=3)
    opts = OPTS.replace(probs_mode="confidence")
    predict_scene(
        scene, near_tie_checkpoint, tmp_path / "one.gpkg", opts, mask_out=tmp_path / "one.tif",
        probs_out=tmp_path / "one_p.tif", progress=False,
    )  # fmt: skip
    r = predict_scene_distributed(
        scene, near_tie_checkpoint, tmp_path / "many.gpkg", opts, DistributedOptions(band_count=4),
        mask_out=tmp_path / "many.tif", probs_out=tmp_path / "many_p.tif", progress=False, client=client,
    )  # fmt: skip
    assert r.bands == 4 and r.polygons is not None and r.polygons > 0
    with rasterio.open(tmp_path / "many_p.tif") as p, rasterio.open(tmp_path / "many.tif") as c:
        top = p.read(1)[c.read(1) != 255]
        assert 0 < int(top.max()) - 255 // 4 <= 1 and len(set(np.unique(c.read(1))) - {255}) >= 2  # near ties
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    _same_file(tmp_path / "one_p.tif", tmp_path / "many_p.tif")
    a, b = pyogrio.read_dataframe(tmp_path / "one.gpkg"), pyogrio.read_dataframe(tmp_path / "many.gpkg")
    assert len(a) == len(b) == r.polygons
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert list(a.geometry.to_wkb()) == list(b.geometry.to_wkb())


def test_a_separately_started_scheduler_and_worker(tmp_path: Path, tiny_checkpoint: Path) -> None:
    port = _free_port()
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    args = ["--host", "127.0.0.1", "--no-dashboard"]
    sched = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)
            (worker_pid,) = c.run(os.getpid).values()
        scene = _scene(tmp_path / "s.tif", seed=5)
        scratch = tmp_path / "shared"
        scratch.mkdir()
        predict_scene(scene, tiny_checkpoint, tmp_path / "one.tif", OPTS, progress=False)
        dist = DistributedOptions(scheduler=f"tcp://127.0.0.1:{port}", scratch_dir=scratch, band_count=3)
        r = predict_scene_distributed(scene, tiny_checkpoint, tmp_path / "many.tif", OPTS, dist, progress=False)
        assert r.bands == 3 and {w.rsplit(":", 1)[1] for w in r.band_workers or []} == {str(worker_pid)}
        _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
        assert list(scratch.iterdir()) == []  # the private band folder is gone
    finally:
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_worker_killed_mid_band_changes_nothing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from distributed import Client, LocalCluster

    scene = _scene(tmp_path / "s.tif", 320, 256, seed=7)  # 7 x 5 tiles: bands that last long enough
    predict_scene(scene, tiny_checkpoint, tmp_path / "one.tif", OPTS, progress=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50) as c,
        Client(c) as client,
    ):
        pids = set(client.run(os.getpid).values())
        killed: list[tuple[int, int]] = []  # (band, pid)

        def killer() -> None:
            deadline = time.time() + 60
            while time.time() < deadline and not killed:
                for f in scratch.rglob("band-*.classes.tif"):  # written by a band task when it starts
                    band, pid = (int(x) for x in f.name.split("-")[1:3])
                    if pid in pids:
                        os.kill(pid, signal.SIGKILL)
                        killed.append((band, pid))
                        return
                time.sleep(0.005)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        dist = DistributedOptions(scratch_dir=scratch, band_count=3, retries=2)
        r = predict_scene_distributed(
            scene, tiny_checkpoint, tmp_path / "many.tif", OPTS, dist, progress=False, client=client
        )
        t.join(timeout=5)
    assert killed, "no band task was seen running"
    band, pid = killed[0]
    assert r.band_workers is not None and not r.band_workers[band].endswith(f":{pid}")  # computed again elsewhere
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    assert list(scratch.iterdir()) == []


def test_a_failing_band_leaves_nothing_behind(tmp_path: Path, tiny_checkpoint: Path, client: object) -> None:
    from rasters import corrupt_middle_block

    scene = write_tif(
        tmp_path / "s.tif", textured((3, 320, 256)), tiled=True, blockxsize=128, blockysize=128, compress="deflate"
    )
    corrupt_middle_block(scene)  # the header and normalisation are fine; a band's read fails on a worker
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=r"s\.tif: read error"):
        predict_scene_distributed(
            scene, tiny_checkpoint, tmp_path / "c.gpkg", OPTS, DistributedOptions(band_count=3, retries=0),
            probs_out=tmp_path / "p.tif", progress=False, client=client,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, temporary, band or spill file


def test_batch_splits_a_big_scene_over_the_cluster(tmp_path: Path, tiny_checkpoint: Path, client: object) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    _scene(root / "big.tif", seed=9)  # 192 x 160 = 30,720 px
    _write_scene(root / "small.tif", "EPSG:32633", 1)  # 96 x 128 = 12,288 px
    out = tmp_path / "out"
    s = run_batch(
        [root], tiny_checkpoint, out, client=client, mask=True, options=OPTS, progress=False, split_above=20_000
    )
    assert (s.done, s.failed) == (2, 0)
    rows = {Path(k).name: v for k, v in read_manifest(out / "manifest.jsonl").items()}
    split = rows["big.tif"]["split"]
    assert split["bands"] == 2 and split["halo_tiles"] == 3 and split["workers"]  # 4 tile rows, 2 workers
    assert "split" not in rows["small.tif"]
    predict_scene(root / "big.tif", tiny_checkpoint, tmp_path / "one.tif", OPTS, progress=False)
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(out / "big.mask.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.tags() == b.tags()
    assert len(pyogrio.read_dataframe(out / "big.gpkg")) == rows["big.tif"]["polygons"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "big.gpkg",
        "big.mask.tif",
        "manifest.jsonl",
        "small.gpkg",
        "small.mask.tif",
    ]


def _cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "predict", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def test_cli_predict_on_a_local_cluster_prints_the_dashboard_once_and_counts_tiles(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    scene = _scene(tmp_path / "s.tif", seed=11)
    common = (scene, "-c", tiny_checkpoint, "--tile-size", "64", "--overlap", "16", "--device", "cpu")
    one = _cli(*common, "-o", tmp_path / "one.tif", "--quiet")
    assert one.returncode == 0, one.stderr
    r = _cli(*common, "-o", tmp_path / "many.tif", "--cluster", "2", "--band-count", "2", timeout=180)
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"Dask dashboard: http://\S+", r.stderr)) == 1
    total = 12 + 3  # tiles + one halo row of 3 tiles
    assert f"{total}/{total} [" in r.stderr and "Traceback" not in r.stderr
    assert "wrote " in r.stdout
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.tif", "one.tif", "s.tif"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster", "0"], "--cluster: 0 workers; give 1 or more"),
        (["--cluster", "2", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler, --cluster: give one of them"),
        (["--scheduler", "nowhere"], "--scheduler: 'nowhere' is not a scheduler address"),
        (["--cluster", "2", "--scratch-dir", "/no/such/dir"], "--scratch-dir: /no/such/dir is not a folder"),
        (["--cluster", "2", "--band-count", "0"], "--band-count: 0; give 1 or more"),
        (["--scratch-dir", "."], "--scratch-dir: only used with --scheduler or --cluster"),
    ],
)
def test_cli_distributed_flags_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    scene = _scene(tmp_path / "s.tif", h=64, w=64)
    proc = _cli(scene, "-o", tmp_path / "c.tif", *args, "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "c.tif").exists()


def test_ctrl_c_removes_the_bands_and_every_output(tmp_path: Path, tiny_checkpoint: Path) -> None:
    scene = _scene(tmp_path / "s.tif", 320, 256, seed=13)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "predict", str(scene), "-c", str(tiny_checkpoint)]
    cmd += ["-o", str(tmp_path / "c.tif"), "--probs-out", str(tmp_path / "p.tif"), "--tile-size", "64"]
    cmd += ["--overlap", "16", "--cluster", "2", "--band-count", "3", "--scratch-dir", str(scratch), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not any(scratch.rglob("band-*.tif")) and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)  # Ctrl-C while bands are being computed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "error: interrupted" in err and "Traceback" not in err, err
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "scratch"]


def test_bands_run_with_the_drivers_torch_threads(tmp_path: Path, tiny_checkpoint: Path, client: object) -> None:
    """On the CPU the forward's rounding depends on the torch thread count (oneDNN splits its sums by
    thread) for tiles of 256 px and more: bands run with the driver's count, so the bytes match."""
    scene = _scene(tmp_path / "s.tif", 512, 320, seed=17)
    opts = OPTS.replace(tile_size=256, overlap=64)
    predict_scene(scene, tiny_checkpoint, tmp_path / "one.tif", opts, probs_out=tmp_path / "one_p.tif", progress=False)
    r = predict_scene_distributed(
        scene, tiny_checkpoint, tmp_path / "many.tif", opts, DistributedOptions(band_count=3),
        probs_out=tmp_path / "many_p.tif", progress=False, client=client,
    )  # fmt: skip
    assert r.bands == 3 and r.halo_tiles == 4
    _same_file(tmp_path / "one.tif", tmp_path / "many.tif")
    _same_file(tmp_path / "one_p.tif", tmp_path / "many_p.tif")
    if torch.get_num_threads() == 1:
        pytest.skip("one torch thread here: nothing to compare the thread count against")
    predict_scene_distributed(
        scene, tiny_checkpoint, tmp_path / "c1.tif", opts, DistributedOptions(band_count=3, threads=1),
        probs_out=tmp_path / "p1.tif", progress=False, client=client,
    )  # fmt: skip
    with rasterio.open(tmp_path / "one_p.tif") as a, rasterio.open(tmp_path / "p1.tif") as b:
        if np.array_equal(a.read(), b.read()):  # the check above is then weaker than it looks
            pytest.skip("this CPU's kernels round the same with 1 and 2 threads on this scene")
