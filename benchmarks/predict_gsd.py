"""What ``--gsd`` costs: a resampled predict against a native one with the same model-grid work.

A SegNeXt-T (16 classes, fixed random weights) whose checkpoint says it was trained at 0.5 m runs,
each case in a fresh subprocess (so that peak RSS is the case's own):

- ``native``: a scene of N^2 px at 0.5 m (``--gsd auto`` decides native: within 10 %);
- ``up``: the same ground at 1 m, (N/2)^2 px: ``auto`` enlarges it 2x, so the model runs on the
  same N^2 model grid (the same tiles and forwards), then maps the blend back to the 1 m grid;
- ``down``: the same ground at 0.25 m, (2N)^2 px: ``auto`` shrinks it 2x to the same N^2 model
  grid (it reads 4x the pixels, and maps back onto 4x the output pixels).

It prints, per case, wall time, forward time (the runner's own timer), the ratio of the wall time
to the ``native`` case measured in the same run (the cost of resampling on read and of the
back-mapping), the pipeline's non-forward seconds, peak RSS and the memory plan's estimate.

    python benchmarks/predict_gsd.py               # N = 2048, tile 512
    python benchmarks/predict_gsd.py --size 1024   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _case(size: int, metres: float, tile: int, workdir: Path) -> dict[str, float | str]:
    import numpy as np
    import rasterio
    import torch
    from rasterio.transform import from_origin

    from segnext_geo.inference import PredictOptions, predict_scene
    from segnext_geo.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 16, gsd_m=0.5).eval()
    ground = 0.5 * 2048  # every case covers the same ground as 2048 px at 0.5 m (scaled with --size)
    n = round(ground * size / 2048 / metres)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (3, n // 16 + 1, n // 16 + 1), dtype=np.uint8)
    img = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :n, :n]
    scene = workdir / f"scene_{metres}.tif"
    profile = {"driver": "GTiff", "width": n, "height": n, "count": 3, "dtype": "uint8", "crs": "EPSG:32632"}
    with rasterio.open(scene, "w", transform=from_origin(500_000, 6_000_000, metres, metres), **profile) as dst:
        dst.write(img)
    opts = PredictOptions(tile_size=tile, overlap=tile // 4, device="cpu", compile="off")
    t0 = time.perf_counter()
    r = predict_scene(scene, model, workdir / f"out_{metres}.tif", opts, progress=False, overwrite=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    est = r.plan.peak_bytes / 2**20 if r.plan is not None else 0.0
    return {
        "scene_px": n,
        "tiles": r.tiles,
        "wall_s": wall,
        "forward_s": r.forward_s,
        "rss_mb": peak,
        "est_mb": est,
        "gsd": r.gsd,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="model-grid side N in px")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--case", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case is not None:
        print(json.dumps(_case(a.size, a.case, a.tile, Path(a.workdir))))
        return
    results: dict[str, dict[str, float | str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, metres in (("native", 0.5), ("up", 1.0), ("down", 0.25)):
            cmd = [sys.executable, __file__, "--size", str(a.size), "--tile", str(a.tile), "--case", str(metres)]
            out = subprocess.run([*cmd, "--workdir", tmp], capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    base = float(results["native"]["wall_s"])
    print(f"model grid {a.size}^2, tile {a.tile}, SegNeXt-T 16 classes, CPU fp32")
    head = ("case", "scene px", "tiles", "wall s", "fwd s", "other s", "ratio", "RSS MB", "est MB")
    print(f"{head[0]:8} " + " ".join(f"{h:>{w}}" for h, w in zip(head[1:], (9, 6, 8, 8, 8, 6, 7, 7), strict=True)))
    for name, r in results.items():
        wall, fwd = float(r["wall_s"]), float(r["forward_s"])
        print(
            f"{name:8} {int(r['scene_px']):>9} {int(r['tiles']):>6} {wall:>8.1f} {fwd:>8.1f} {wall - fwd:>8.1f} "
            f"{wall / base:>6.2f} {float(r['rss_mb']):>7.0f} {float(r['est_mb']):>7.0f}"
        )
    for name, r in results.items():
        print(f"{name}: {r['gsd']}")


if __name__ == "__main__":
    main()
