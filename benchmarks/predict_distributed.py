"""One scene over Dask: ``predict --cluster 1`` and ``--cluster 2`` against one process, same run.

Baseline, measured in the same run with the same work: ``predict_scene`` in this process with
the model loaded once (SegNeXt-T, 16 classes, tile 1024, overlap 256, batch 8, all cores). Then
:func:`~segnext_geo.inference.distributed.predict_scene_distributed` on a fresh LocalCluster of 1
worker (all cores) and of 2 workers (cores / 2 threads each), cluster start-up and the model load
on every worker included, with the automatic band count. It prints wall time, the ratio to the
baseline, the bands and the halo (tile computations done twice, as a count and a share of the
scene's tiles), the driver's peak RSS (the distributed runs come first, so it is theirs) and the
largest worker's, and checks that every class raster equals the baseline's.

    python benchmarks/predict_distributed.py              # an 8192^2 scene
    python benchmarks/predict_distributed.py --size 4096  # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from segnext_geo.inference import InferenceRunner, PredictOptions, predict_scene
from segnext_geo.inference.distributed import DistributedOptions, predict_scene_distributed
from segnext_geo.models import build_model, load_model, save_checkpoint
from segnext_geo.synthetic import synthesize, write_scene


def _peak_mib() -> float:
    """Peak RSS since the last :func:`_reset_peak` (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Forget the peak so far (Linux: writing 5 to clear_refs resets VmHWM): synthesizing the scene is
    not the driver's work."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--tile-size", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=256)
    ap.add_argument("--workers", default="1,2", help="cluster sizes to run, e.g. 1,2")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="segnext-dist-bench-"))
    try:
        scene = work / "scene.tif"
        write_scene(synthesize(args.size, seed=0), scene)
        torch.manual_seed(0)
        classes = 16
        ckpt = save_checkpoint(
            build_model("tiny", classes, class_names=[f"c{i}" for i in range(classes)]), work / "m.pth"
        )
        opts = PredictOptions(tile_size=args.tile_size, overlap=args.overlap, batch_size=8, device="cpu")
        print(
            f"{args.size}^2 px, SegNeXt-T ({classes} classes), tile {args.tile_size}, "
            f"overlap {args.overlap}, {cores} cores"
        )

        _reset_peak()
        rows: list[tuple[str, float, str]] = []
        worker_peak = 0.0
        for n in (int(x) for x in args.workers.split(",")):
            t = time.perf_counter()
            r = predict_scene_distributed(
                scene, ckpt, work / f"dist{n}.tif", opts, DistributedOptions(cluster=n), progress=False
            )
            secs = time.perf_counter() - t
            halo = f"{r.bands} bands, {r.halo_tiles} halo tiles ({r.halo_tiles / r.tiles:.1%} of {r.tiles})"
            rows.append((f"LocalCluster, {n} worker(s)", secs, halo))
            worker_peak = max([worker_peak, *(r.band_peak_rss_mb or [])])
        driver_peak = _peak_mib()

        torch.set_num_threads(cores)
        runner = InferenceRunner(load_model(ckpt), opts.device, compile=opts.compile)
        t = time.perf_counter()
        predict_scene(scene, runner, work / "one.tif", opts, progress=False)
        t_one = time.perf_counter() - t
        for n in (int(x) for x in args.workers.split(",")):
            with rasterio.open(work / "one.tif") as a, rasterio.open(work / f"dist{n}.tif") as b:
                same = np.array_equal(a.read(), b.read())  # (tags differ: the baseline is given a runner)
            assert same, f"the {n}-worker classes differ from the single-process classes"

        print(f"{'run':<28}{'seconds':>9}{'vs one process':>16}  split")
        print(f"{'one process (baseline)':<28}{t_one:>9.1f}{1.0:>15.2f}x  -")
        for name, secs, halo in rows:
            print(f"{name:<28}{secs:>9.1f}{t_one / secs:>15.2f}x  {halo}")
        print(f"class rasters identical to the baseline's: yes ({len(rows)} runs)")
        print(f"peak RSS: driver {driver_peak:.0f} MiB (distributed runs), largest worker {worker_peak:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
