"""End-to-end ``predict_scene`` on synthetic scenes: overhead over bare forwards, peak memory, MPix/s.

For each scene size (default 2048^2 and 8192^2, uint8 RGB, tiled DEFLATE GeoTIFFs written
here), a fresh subprocess runs ``predict_scene`` with the tiny SegNeXt (SegNeXt-T, 16 classes)
at the default settings (tile 1024, overlap 256, batch 8, 2 reader threads, Hann blending,
automatic working set) and records:

- wall time of the whole pipeline (read, normalise, forward, softmax, blend, write, COG), and
  the part of it spent inside model forwards (timed around ``model.forward``);
- peak RSS of the process right after it (``ru_maxrss``; each size in its own process), and the
  RSS peak in each quarter of the run (it stays flat once the first super-tile row is done);
- then, in the same process, the baseline: a plain loop of model forwards, batch by batch, over
  tiles of the same shape. ``--baseline-tiles`` of them are timed and the time is scaled to the
  scene's tile count (a few minutes on 2 cores instead of twice the pipeline's time); 0 times all.

Both measurements are warm (one forward first). It prints the pipeline/baseline ratio (goal
<= 1.10), MPix/s, both peak RSS figures and their ratio (goal: <= 1.25), and the predicted peak
for a 100,000^2 scene. On a small machine shared with other jobs, ``--threads 1`` gives stabler
timings: two OpenMP threads on two busy cores stall at every barrier.

    python benchmarks/predict_scene.py                        # 2048^2 and 8192^2
    python benchmarks/predict_scene.py --sizes 1024,4096      # quicker
    python benchmarks/predict_scene.py --threads 1 --baseline-tiles 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = 16
HUGE = 100_000


def write_scene(path: Path, size: int) -> None:
    """A textured uint8 RGB scene, written block by block (never whole in memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32632",
        "transform": from_origin(500_000, 6_000_000, 0.5, 0.5),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
    }
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, 512):
            for x0 in range(0, size, 512):
                h, w = min(512, size - y0), min(512, size - x0)
                yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
                rng = np.random.default_rng(y0 * 100_003 + x0)
                base = 100 + 50 * np.sin(xx / 97.0) * np.cos(yy / 131.0) + 30 * np.sin((xx + yy) / 23.0)
                bands = [base + 20 * k + rng.normal(0, 12, (h, w)) for k in range(3)]
                dst.write(np.clip(bands, 0, 255).astype(np.uint8), window=Window(x0, y0, w, h))


class RSSSampler:
    """Samples this process's resident set size (``/proc/self/status``) every ``period`` s in a thread."""

    def __init__(self, period: float = 0.25) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    @staticmethod
    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.samples.append((time.perf_counter() - self._t0, self.rss_mb()))

    def stop(self) -> list[float]:
        """Stop; return the peak RSS (MB) of each quarter of the sampled time."""
        self._stop.set()
        self._thread.join()
        end = self.samples[-1][0] if self.samples else 1.0
        return [
            max((r for t, r in self.samples if q * end / 4 <= t <= (q + 1) * end / 4), default=0.0) for q in range(4)
        ]


def child(args: argparse.Namespace) -> None:
    """Run one size; print a JSON line with timings and peak RSS."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from segnext_geo.inference import TileGrid, auto_working_set, predict_scene
    from segnext_geo.models import load_model

    model = load_model(args.checkpoint)
    inside = [0.0]  # seconds spent in model forwards during the pipeline (measured in the same run)
    forward = model.forward

    def timed_forward(x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        y = forward(x)
        inside[0] += time.perf_counter() - t
        return y

    grid = TileGrid(args.size, args.size, args.tile_size, args.overlap, auto_working_set(CLASSES))
    x = torch.randn(args.batch_size, 3, grid.th, grid.tw)
    with torch.inference_mode():
        model(x[:1])  # warm-up (oneDNN builds its kernels on first use) before either measurement

    model.forward = timed_forward  # type: ignore[method-assign]
    sampler = RSSSampler()
    t0 = time.perf_counter()
    r = predict_scene(
        args.scene,
        model,
        Path(args.workdir) / f"classes_{args.size}.tif",
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        workers=args.workers,
        device="cpu",
        overwrite=True,
        progress=not args.quiet,
    )
    pipeline_s = time.perf_counter() - t0
    quarters = sampler.stop()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.forward = forward  # type: ignore[method-assign]

    n = r.tiles - r.skipped_tiles
    timed_tiles = n if args.baseline_tiles <= 0 else min(n, args.baseline_tiles)
    with torch.inference_mode():
        t0 = time.perf_counter()
        done = 0
        while done < timed_tiles:
            b = min(args.batch_size, timed_tiles - done)
            model(x[:b])
            done += b
        baseline_s = (time.perf_counter() - t0) * n / timed_tiles
    print(
        json.dumps(
            {
                "size": args.size,
                "tiles": r.tiles,
                "baseline_tiles": timed_tiles,
                "pipeline_s": pipeline_s,
                "forward_in_pipeline_s": inside[0],
                "baseline_s": baseline_s,
                "peak_rss_mb": peak_kb / 1024,
                "rss_quarters_mb": quarters,
                "max_extent": grid.max_extent,
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def design_working_set_mb(batch: int, tile: int, overlap: int, workers: int, extent: int) -> float:
    """The pipeline's size-independent buffers (MB), none of which depends on the scene size."""
    acc = (CLASSES + 2) * extent * extent * 4  # one super-tile: K sums, weight sum, validity
    partials = 2 * (CLASSES + 1) * extent * overlap * 4  # strips for the next super-tile and one being spilled
    logits = 2 * CLASSES * tile * tile * 4  # SegNeXt on the CPU runs image by image: logits + softmax of one
    tiles = (batch + 2 * max(1, workers) + batch) * 3 * tile * tile * 4  # prefetched tiles + the stacked batch
    gdal_cache = 64 * 2**20
    return (acc + partials + logits + tiles + gdal_cache) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2048,8192", help="comma-separated scene sides in px")
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--baseline-tiles",
        type=int,
        default=24,
        help="tiles of the bare-forward loop actually timed, scaled to the scene's count (0: all)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from segnext_geo.models import build_model, save_checkpoint

    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="segnext_bench_predict_") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        ckpt = save_checkpoint(build_model("tiny", CLASSES), work / "tiny16.pth")
        for size in sizes:
            scene = work / f"scene_{size}.tif"
            t = time.perf_counter()
            write_scene(scene, size)
            print(f"scene {size}^2 written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            cmd = [sys.executable, __file__, "--child", "--size", str(size), "--scene", str(scene)]
            cmd += ["--checkpoint", str(ckpt), "--workdir", str(work), "--tile-size", str(args.tile_size)]
            cmd += ["--overlap", str(args.overlap), "--batch-size", str(args.batch_size)]
            cmd += ["--workers", str(args.workers), "--threads", str(args.threads)]
            cmd += ["--baseline-tiles", str(args.baseline_tiles)] + (["--quiet"] if args.quiet else [])
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            scene.unlink()

    print(f"\npredict_scene, SegNeXt-T ({CLASSES} classes), CPU, {results[0]['threads']} intra-op thread(s), ")
    print(f"tile {args.tile_size}, overlap {args.overlap}, batch {args.batch_size}, {args.workers} reader threads\n")
    print("| scene | tiles | pipeline s | bare forwards s | ratio | outside forward | MPix/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        mpix = r["size"] ** 2 / 1e6 / r["pipeline_s"]
        ratio = r["pipeline_s"] / r["baseline_s"]
        outside = 1 - r["forward_in_pipeline_s"] / r["pipeline_s"]
        print(
            f"| {r['size']}^2 | {r['tiles']} | {r['pipeline_s']:.1f} | {r['baseline_s']:.1f} | {ratio:.3f} "
            f"| {outside:.1%} | {mpix:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    print("\n'outside forward': share of the pipeline's wall time not spent in model forwards (same run, load-proof)")
    for r in results:
        print(
            f"RSS peak per quarter of the {r['size']}^2 run (MB): {', '.join(f'{q:.0f}' for q in r['rss_quarters_mb'])}"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        rss_ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        slope = max(0.0, (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["size"] ** 2 - a["size"] ** 2))
        linear = b["peak_rss_mb"] + slope * (HUGE**2 - b["size"] ** 2)
        q = b["rss_quarters_mb"]
        plateau = max(q[1:])
        extent = b["max_extent"][0]
        design = design_working_set_mb(args.batch_size, args.tile_size, args.overlap, args.workers, extent)
        print(f"\npeak RSS {b['size']}^2 / {a['size']}^2 = {rss_ratio:.3f} (goal <= 1.25)")
        print(
            f"predicted peak RSS at {HUGE:,}^2: ~{max(plateau, b['peak_rss_mb']):,.0f} MB: the {b['size']}^2 run "
            f"already uses full super-tiles of {extent} px, the spill path and a full GDAL cache, and its RSS "
            f"stays flat after the first quarter (late-quarter growth {q[3] - q[1]:+.0f} MB); size-independent "
            f"buffers by design ~{design:,.0f} MB + model and libraries. (A linear extrapolation in pixels, "
            f"which nothing in the pipeline follows, would give {linear:,.0f} MB.)"
        )
        hours = HUGE**2 / 1e6 / (b["size"] ** 2 / 1e6 / b["pipeline_s"]) / 3600
        print(f"time at {HUGE:,}^2 at the {b['size']}^2 rate: {hours:.1f} h")


if __name__ == "__main__":
    main()
