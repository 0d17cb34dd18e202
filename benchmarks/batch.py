"""Batch throughput on Dask: scenes per minute with 1 and 2 local workers.

Baseline, measured in the same run: a plain sequential Python loop calling
``segnext_geo.inference.predict_scene`` on the same scenes with the model loaded once.
Each Dask run starts its own LocalCluster (its start-up is included) and loads the
checkpoint once per worker. Torch threads: the baseline uses all cores; each Dask worker
uses cores / workers.

    python benchmarks/batch.py                 # 8 scenes of 768 x 768
    python benchmarks/batch.py --scenes 16 --size 1024
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from segnext_geo.batch import read_manifest, run_batch
from segnext_geo.inference import InferenceRunner, PredictOptions, predict_scene
from segnext_geo.models import build_model, load_model, save_checkpoint
from segnext_geo.synthetic import DEMO_CLASSES, synthesize, write_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--tile-size", type=int, default=512)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="segnext-batch-bench-"))
    try:
        scenes = work / "scenes"
        scenes.mkdir()
        for i in range(args.scenes):
            write_scene(synthesize(args.size, seed=i), scenes / f"scene_{i:03d}.tif")
        torch.manual_seed(0)
        ckpt = save_checkpoint(build_model("tiny", len(DEMO_CLASSES), class_names=list(DEMO_CLASSES)), work / "m.pth")
        opts = PredictOptions(tile_size=args.tile_size, overlap=64, batch_size=4, device="cpu")
        print(f"{args.scenes} scenes of {args.size}^2 px, SegNeXt-T, tile {args.tile_size}, {cores} cores")

        torch.set_num_threads(cores)
        t = time.perf_counter()
        runner = InferenceRunner(load_model(ckpt), opts.device, compile=opts.compile)  # loaded once, as a worker does
        (work / "seq").mkdir()
        for i, path in enumerate(sorted(scenes.glob("*.tif"))):
            predict_scene(path, runner, work / "seq" / f"{i}.gpkg", opts, progress=False)
        t_seq = time.perf_counter() - t
        rows = [("sequential loop of predict_scene", t_seq)]
        for n in (1, 2):
            t = time.perf_counter()
            s = run_batch(
                [scenes],
                ckpt,
                work / f"dask{n}",
                workers=n,
                threads_per_worker=max(1, cores // n),
                options=opts,
                progress=False,
            )
            assert s.done == args.scenes and s.failed == 0, s.failures
            rows.append((f"dask LocalCluster, {n} worker(s)", time.perf_counter() - t))
            manifest = read_manifest(work / f"dask{n}" / "manifest.jsonl")
            worker_rss = max(r.get("worker_peak_rss_mb", 0) for r in manifest.values())
        print(f"{'run':<36}{'seconds':>9}{'scenes/min':>12}{'vs loop':>9}")
        for name, secs in rows:
            print(f"{name:<36}{secs:>9.1f}{args.scenes / secs * 60:>12.1f}{t_seq / secs:>8.2f}x")
        print(
            f"peak RSS: driver {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
            f"largest Dask worker {worker_rss:.0f} MiB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
