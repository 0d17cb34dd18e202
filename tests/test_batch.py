"""Batch processing on a real Dask cluster: failures isolated, resumable, workers may die."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.transform import from_origin

from segnext_geo.batch import discover_inputs, read_manifest, run_batch
from segnext_geo.inference import PredictOptions

OPTS = PredictOptions(tile_size=64, overlap=16, batch_size=2, device="cpu")


def _write_scene(path: Path, crs: str, seed: int, size: tuple[int, int] = (96, 128)) -> None:
    rng = np.random.default_rng(seed)
    h, w = size
    data = np.zeros((3, h, w), np.uint8)
    data[:] = rng.integers(0, 60, size=(3, h, w))
    data[:, h // 4 : h // 2, w // 4 : w // 2] = 220  # a bright block: real structure for the model
    origin = (500_000.0, 5_000_000.0) if crs != "EPSG:4326" else (10.0, 50.0)
    res = 0.5 if crs != "EPSG:4326" else 5e-6
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": from_origin(*origin, res, res),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """6 scenes in two CRSs under nested folders, one of them corrupt."""
    root = tmp_path / "archive"
    (root / "utm").mkdir(parents=True)
    (root / "geo").mkdir()
    for i in range(3):
        _write_scene(root / "utm" / f"s{i}.tif", "EPSG:32633", i)
    for i in range(2):
        _write_scene(root / "geo" / f"g{i}.tif", "EPSG:4326", 10 + i)
    (root / "geo" / "broken.tif").write_text("this is not a GeoTIFF\n")
    return root


def _statuses(out: Path) -> dict[str, str]:
    return {Path(k).name: v["status"] for k, v in read_manifest(out / "manifest.jsonl").items()}


def test_discover_inputs_mirrors_relative_paths(archive: Path, tmp_path: Path) -> None:
    jobs = discover_inputs([archive])
    assert sorted(str(j.rel) for j in jobs) == ["geo/broken", "geo/g0", "geo/g1", "utm/s0", "utm/s1", "utm/s2"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{archive / 'utm' / 's0.tif'}\n# comment\n{archive / 'geo' / 'g1.tif'}\n")
    assert sorted(str(j.rel) for j in discover_inputs([listing])) == ["g1", "s0"]
    pattern = str(archive / "**" / "s*.tif")
    assert sorted(str(j.rel) for j in discover_inputs([pattern])) == ["utm/s0", "utm/s1", "utm/s2"]


def test_local_cluster_failure_isolation_resume_and_merge(archive: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "out"
    merged = tmp_path / "all.gpkg"
    s = run_batch([archive], tiny_checkpoint, out, workers=2, mask=True, merge=merged, options=OPTS, progress=False)
    assert (s.done, s.skipped, s.failed) == (5, 0, 1)
    st = _statuses(out)
    assert st["broken.tif"] == "failed" and sum(v == "done" for v in st.values()) == 5
    rows = read_manifest(out / "manifest.jsonl")
    broken = next(r for k, r in rows.items() if k.endswith("broken.tif"))
    assert "broken.tif" in broken["error"] or "not" in broken["error"]
    for r in rows.values():
        if r["status"] == "done":
            assert set(r) >= {"size", "mtime", "outputs", "elapsed_s", "pixels", "polygons", "worker"}
            assert r["pixels"] == 96 * 128
            assert Path(r["outputs"]["vector"]).exists() and Path(r["outputs"]["mask"]).exists()
    assert (out / "utm" / "s1.gpkg").exists() and (out / "geo" / "g0.mask.tif").exists()
    assert not (out / "geo" / "broken.gpkg").exists()
    # two CRSs, no --merge-crs: one layer per CRS, each with a source column
    layers = sorted(name for name, _ in pyogrio.list_layers(merged))
    assert len(layers) == 2 and all(name.startswith("polygons_") for name in layers)
    assert "2 layers, one per CRS" in s.merge_note

    # a rerun does no work: 5 skipped, the broken file is tried again and fails again
    s2 = run_batch([archive], tiny_checkpoint, out, workers=2, mask=True, options=OPTS, progress=False)
    assert (s2.done, s2.skipped, s2.failed) == (0, 5, 1)

    # touching one input reprocesses only that scene
    target = archive / "utm" / "s2.tif"
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    s3 = run_batch([archive], tiny_checkpoint, out, workers=2, mask=True, options=OPTS, progress=False)
    assert (s3.done, s3.skipped, s3.failed) == (1, 4, 1)
    last = read_manifest(out / "manifest.jsonl")[str(target.resolve())]
    assert last["status"] == "done" and last["mtime"] == target.stat().st_mtime_ns


def test_cli_exit_code_summary_and_merge_crs(archive: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "cli"
    merged = tmp_path / "m.gpkg"
    cmd = [
        sys.executable,
        "-m",
        "segnext_geo.cli",
        "batch",
        str(archive / "geo"),
        "--checkpoint",
        str(tiny_checkpoint),
        "--out-dir",
        str(out),
        "--workers",
        "1",
        "--tile-size",
        "64",
        "--overlap",
        "16",
        "--device",
        "cpu",
        "--merge",
        str(merged),
        "--merge-crs",
        "EPSG:3857",
        "--keep-background",
        "--mask",
        "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr  # one scene failed
    assert "done 2, skipped 0, failed 1" in r.stdout
    assert "broken.tif" in r.stderr and "Traceback" not in r.stderr
    gdf = pyogrio.read_dataframe(merged)
    assert gdf.crs.to_epsg() == 3857 and set(gdf["source"].map(lambda p: Path(p).name)) <= {"g0.tif", "g1.tif"}
    # --keep-background: every class of each scene's class raster has polygons, background included
    for name in ("g0", "g1"):
        with rasterio.open(out / f"{name}.mask.tif") as src:
            present = set(np.unique(src.read(1)).tolist()) - {255}
        assert 0 in present and set(pyogrio.read_dataframe(out / f"{name}.gpkg")["class_id"]) == present


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connects_to_a_separately_started_scheduler(archive: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    sched = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            f"tcp://127.0.0.1:{port}",
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)
        s = run_batch(
            [archive / "utm"],
            tiny_checkpoint,
            tmp_path / "remote",
            scheduler=f"tcp://127.0.0.1:{port}",
            options=OPTS,
            progress=False,
        )
        assert (s.done, s.failed) == (3, 0)
        workers = {r["worker"] for r in read_manifest(tmp_path / "remote" / "manifest.jsonl").values()}
        assert len(workers) == 1  # ran on the external worker, not a local cluster
    finally:
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_killed_worker_loses_nothing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from distributed import Client, LocalCluster

    root = tmp_path / "many"
    root.mkdir()
    for i in range(8):
        _write_scene(root / f"k{i}.tif", "EPSG:32633", 100 + i, size=(192, 192))
    out = tmp_path / "killed"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        killed: list[int] = []
        specs: list[str] = []
        in_flight: list[str] = []  # the scenes the killed worker was running when it died

        def executing(dask_worker: Any) -> list[str]:
            """On a worker: the run specs (holding the scene path) of the tasks it is running now."""
            return [repr(getattr(ts.run_spec, "args", ts.run_spec)) for ts in dask_worker.state.executing]

        def killer() -> None:
            deadline = time.time() + 120
            while time.time() < deadline:
                if read_manifest(out / "manifest.jsonl"):  # one scene done: the workers are warm
                    for addr, pid in pids.items():
                        running = client.run(executing, workers=[addr]).get(addr, [])
                        specs.extend(running)
                        if running:  # SIGKILL while a scene is being processed, not between scenes
                            os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
                            in_flight.extend(f"k{i}.tif" for i in range(8) for spec in running if f"k{i}.tif" in spec)
                            return
                time.sleep(0.05)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        s = run_batch([root], tiny_checkpoint, out, client=client, retries=3, options=OPTS, progress=False)
        t.join(timeout=5)
    assert killed, "the worker was never killed"
    assert len(in_flight) == 1, (in_flight, specs)  # it died with exactly one scene in its hands
    assert (s.done, s.failed) == (8, 0)
    rows = read_manifest(out / "manifest.jsonl")
    assert all(r["status"] == "done" and Path(r["outputs"]["vector"]).exists() for r in rows.values())
    # the scene it was running was retried and finished by the other worker; nothing was recorded twice
    (lost,) = [r for r in rows.values() if Path(r["input"]).name == in_flight[0]]
    assert lost["worker"].rsplit(":", 1)[1] != str(killed[0])
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and sorted(Path(x["input"]).name for x in lines) == [f"k{i}.tif" for i in range(8)]


@pytest.mark.parametrize("case", ["out-dir-is-input-dir", "merge-is-input", "two-scenes-one-output"])
def test_outputs_that_would_overwrite_an_input_or_each_other_are_refused(
    tmp_path: Path, tiny_checkpoint: Path, case: str
) -> None:
    """Issue 11 item 12, batch side: refused before any cluster starts, inputs untouched."""
    from segnext_geo.errors import UserError

    root = tmp_path / "in"
    root.mkdir()
    _write_scene(root / "a.tif", "EPSG:32633", 1)
    out, merge = tmp_path / "out", None
    if case == "out-dir-is-input-dir":
        _write_scene(root / "a.mask.tif", "EPSG:32633", 2)  # would be a.tif's --mask output
        out = root
        message = r"a\.mask\.tif \(output of .*a\.tif\) is the input scene"
    elif case == "merge-is-input":
        merge = root / "a.tif"
        message = r"--merge\) is the input scene"
    else:
        _write_scene(root / "a.tiff", "EPSG:32633", 3)  # a.tif and a.tiff both map to a.gpkg
        message = "would be written twice"
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    with pytest.raises(UserError, match=message):
        run_batch([root], tiny_checkpoint, out, mask=True, merge=merge, options=OPTS, progress=False)
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.name in before} == before
    assert not (out / "manifest.jsonl").exists()  # refused before the first manifest row
