"""End-to-end ``predict_scene`` on synthetic scenes: overhead over bare forwards, peak memory, MPix/s.

**Speed** (default: 2048^2 and 8192^2). For each size, a fresh subprocess builds the
:class:`~segnext_geo.inference.InferenceRunner` that ``predict_scene`` would build with the
default options (SegNeXt-T, 16 classes: fp32, fused oneDNN kernels, channels_last; ``compile
auto``, which stays eager below its break-even) and passes *that runner* to ``predict_scene``
(tile 1024, overlap 256, batch 8, 2 reader threads, Hann blending, automatic working set). The
runner times its own forwards (``runner.timer``), so the pipeline's forward time is measured
where predict runs it, with no patching. Then, in the same process, the same runner runs the
bare forwards: a loop over tiles of the same shape (``--baseline-tiles`` of them, scaled to the
scene's tile count; 0 times all). It prints:

- ratio = pipeline wall time / bare-forward time (target <= 1.10);
- the same ratio in process CPU seconds (every thread of the process: reader threads, writer,
  forwards), which other jobs on a shared machine barely move, unlike the wall clock;
- the pipeline's own forward share (forwards inside the run / its wall time), which needs no
  second measurement and so is immune to load changes between the two;
- MPix/s, peak RSS and the RSS peak per quarter of the run (flat once the first super-tile row
  is done), and the memory model's estimate for the run.

**Memory** (``--memory``): SegNeXt-T with 16 and with 150 classes, with and without
``--probs-out``, each in its own process on a 3072^2 scene, against the estimate of
:func:`segnext_geo.inference.estimate_peak` (the formula in the README and ``--help``).

    python benchmarks/predict_scene.py                        # 2048^2 and 8192^2
    python benchmarks/predict_scene.py --sizes 1024,4096      # quicker
    python benchmarks/predict_scene.py --memory               # the peak-memory formula, 16 and 150 classes
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
    """Run one scene in this process; print a JSON line with timings and memory."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from segnext_geo.inference import InferenceRunner, PredictOptions, predict_scene
    from segnext_geo.models import load_model

    options = PredictOptions(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, workers=args.workers, device="cpu"
    )
    model = load_model(args.checkpoint)
    runner = InferenceRunner(
        model,
        options.device,
        precision=options.precision,
        compile=options.compile,
        deterministic=options.deterministic,
        tta=options.tta,
        num_classes=model.meta.num_classes,
    )  # exactly what predict_scene builds from these options (inference/predict.py, _runner)
    tile = min(args.tile_size, args.size)
    x = torch.randn(1, 3, tile, tile)
    runner(x)  # warm-up (oneDNN builds its kernels on first use) before either measurement
    runner.timer.reset()

    sampler = RSSSampler()
    t0, c0 = time.perf_counter(), time.process_time()
    probs = Path(args.workdir) / f"probs_{args.size}.tif" if args.probs else None
    r = predict_scene(
        args.scene, runner, Path(args.workdir) / f"classes_{args.size}.tif", options,
        probs_out=probs, overwrite=True, progress=not args.quiet,
    )  # fmt: skip
    pipeline_s, pipeline_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    quarters = sampler.stop()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forward_in_pipeline = r.forward_s

    n = r.tiles - r.skipped_tiles
    timed_tiles = n if args.baseline_tiles <= 0 else min(n, args.baseline_tiles)
    baseline_s = baseline_cpu_s = float("nan")
    if timed_tiles:
        runner.timer.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(timed_tiles):
            runner(x)  # the same runner, the same fused path, one tile per forward as predict runs it
        baseline_s = (time.perf_counter() - t0) * n / timed_tiles
        baseline_cpu_s = (time.process_time() - c0) * n / timed_tiles
    assert r.plan is not None
    print(
        json.dumps(
            {
                "size": args.size,
                "classes": args.classes,
                "probs": bool(args.probs),
                "tiles": r.tiles,
                "baseline_tiles": timed_tiles,
                "pipeline_s": pipeline_s,
                "forward_in_pipeline_s": forward_in_pipeline,
                "baseline_s": baseline_s,
                "pipeline_cpu_s": pipeline_cpu_s,
                "baseline_cpu_s": baseline_cpu_s,
                "peak_rss_mb": peak_kb / 1024,
                "rss_quarters_mb": quarters,
                "estimate_mb": r.plan.peak_bytes / 2**20,
                "tile": r.plan.tile,
                "working_set": r.plan.working_set,
                "runner": r.runner,
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def run_child(work: Path, ckpt: Path, scene: Path, size: int, args: argparse.Namespace, **extra: object) -> dict:
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--scene", str(scene), "--checkpoint", str(ckpt)]
    cmd += ["--workdir", str(work), "--tile-size", str(args.tile_size), "--overlap", str(args.overlap)]
    cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers), "--threads", str(args.threads)]
    cmd += ["--baseline-tiles", str(extra.get("baseline_tiles", args.baseline_tiles))]
    cmd += ["--classes", str(extra.get("classes", 16))] + (["--probs"] if extra.get("probs") else [])
    cmd += ["--quiet"] if args.quiet else []
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def speed(args: argparse.Namespace, work: Path, ckpt: Path) -> None:
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        scene = work / f"scene_{size}.tif"
        t = time.perf_counter()
        write_scene(scene, size)
        print(f"scene {size}^2 written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results.append(run_child(work, ckpt, scene, size, args))
        scene.unlink()
    r0 = results[0]
    print(f"\npredict_scene, SegNeXt-T (16 classes), CPU, {r0['threads']} intra-op thread(s), runner {r0['runner']}")
    print(f"tile {args.tile_size}, overlap {args.overlap}, batch {args.batch_size}, {args.workers} reader threads\n")
    print(
        "| scene | tiles | pipeline s | bare forwards s | ratio | forwards in the run s | forward share "
        "| CPU s pipeline / bare | CPU ratio | MPix/s | km²/h at 0.5 m | peak RSS MB | estimate MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mpix = r["size"] ** 2 / 1e6 / r["pipeline_s"]
        km2h = mpix * 1e6 * 0.25 / 1e6 * 3600
        ratio = r["pipeline_s"] / r["baseline_s"]
        share = r["forward_in_pipeline_s"] / r["pipeline_s"]
        cpu_ratio = r["pipeline_cpu_s"] / r["baseline_cpu_s"]
        print(
            f"| {r['size']}² | {r['tiles']} | {r['pipeline_s']:.1f} | {r['baseline_s']:.1f} | {ratio:.3f} "
            f"| {r['forward_in_pipeline_s']:.1f} | {share:.1%} "
            f"| {r['pipeline_cpu_s']:.1f} / {r['baseline_cpu_s']:.1f} | {cpu_ratio:.3f} "
            f"| {mpix:.3f} | {km2h:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['estimate_mb']:.0f} |"
        )
    print("\nratio: pipeline wall time / the same runner's bare forwards over as many tiles (target <= 1.10)")
    print("forward share: forwards timed inside the pipeline run / its wall time (same run, load-proof)")
    print("CPU ratio: process CPU seconds (all threads) of the run / of the bare forwards (robust to other jobs)")
    for r in results:
        q = ", ".join(f"{v:.0f}" for v in r["rss_quarters_mb"])
        print(f"RSS peak per quarter of the {r['size']}² run (MB): {q}")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"\npeak RSS {b['size']}² / {a['size']}² = {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}")
        hours = HUGE**2 / 1e6 / (b["size"] ** 2 / 1e6 / b["pipeline_s"]) / 3600
        print(f"time at {HUGE:,}² at the {b['size']}² rate: {hours:.1f} h; peak memory stays at the {b['size']}² level")


def memory(args: argparse.Namespace, work: Path) -> None:
    import torch

    from segnext_geo.models import build_model, save_checkpoint

    size = 3072
    scene = work / f"scene_{size}.tif"
    write_scene(scene, size)
    rows = []
    for classes in (16, 150):
        torch.manual_seed(0)
        ckpt = save_checkpoint(build_model("tiny", classes), work / f"tiny{classes}.pth")
        for probs in (False, True):
            r = run_child(work, ckpt, scene, size, args, classes=classes, probs=probs, baseline_tiles=1)
            rows.append(r)
            print(
                f"K={classes} probs={probs}: {r['peak_rss_mb']:.0f} MB, estimate {r['estimate_mb']:.0f}",
                file=sys.stderr,
            )
    print(f"\npeak memory of predict_scene, SegNeXt-T, {size}² scene, tile {args.tile_size}, batch {args.batch_size}\n")
    print("| classes | --probs-out | tile | working set | measured peak RSS MB | estimate MB | measured / estimate |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['classes']} | {'yes' if r['probs'] else 'no'} | {r['tile']} | {r['working_set']} "
            f"| {r['peak_rss_mb']:.0f} | {r['estimate_mb']:.0f} | {r['peak_rss_mb'] / r['estimate_mb']:.2f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2048,8192", help="comma-separated scene sides in px")
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--baseline-tiles", type=int, default=24, help="bare forwards timed, scaled to the tile count (0: all)"
    )
    p.add_argument("--memory", action="store_true", help="check the peak-memory formula with 16 and 150 classes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--classes", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--probs", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    import torch

    from segnext_geo.models import build_model, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="segnext_bench_predict_") as tmp:
        work = Path(tmp)
        if args.memory:
            memory(args, work)
            return
        torch.manual_seed(0)
        ckpt = save_checkpoint(build_model("tiny", 16), work / "tiny16.pth")
        speed(args, work, ckpt)


if __name__ == "__main__":
    main()
