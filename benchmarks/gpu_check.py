"""One command to check the CUDA path on a GPU machine and measure it: prints ONE table.

    python benchmarks/gpu_check.py              # on a CUDA machine: < 5 minutes on one H100/H200
    python benchmarks/gpu_check.py --cpu-only   # the same checks on the CPU, small sizes (CI, ~1 minute)

Rows (Markdown, ``| check | result |``):

- CUDA fp32 against CPU fp32 logits (SegNeXt-T and -B, 512², max |diff| / max |logit|; TF32 off);
- bf16 against fp32 labels on the device (agreement, random weights: near-ties included);
- ``predict`` with ``--deterministic``: batch 1 and batch 8 give byte-identical outputs; the
  default (batched) path is reported too;
- ``cuda:1`` gives the same bytes as ``cuda:0`` (when two GPUs exist);
- ``predict`` throughput for SegNeXt-T/S/B/L at tile 1024 (4096² scene, batch 8), in fp32 eager,
  bf16 eager and bf16 compiled (inductor + CUDA graphs) modes: MPix/s, km²/s at 0.5 m, the ratio
  of ``predict`` to the bare forwards of the same runner over as many batches, peak GPU memory;
- rows from ``benchmarks/_gpu_train.py`` ``train_checks(device)`` when that file exists;
- the script's peak host RSS.

With ``--cpu-only`` (or without CUDA) the same code runs on the CPU with SegNeXt-T only, a 256²
scene and tile 128, and the compiled mode is skipped, so the script's logic is tested in CI.
A check that fails prints its error in its row; the script always prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for the optional _gpu_train helper

Rows = list[tuple[str, str]]


def write_scene(path: Path, size: int) -> Path:
    """A textured uint8 RGB GeoTIFF (0.5 m pixels, UTM), written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32632",
        "transform": from_origin(500_000, 6_000_000, 0.5, 0.5), "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, 1024):
            for x0 in range(0, size, 1024):
                h, w = min(1024, size - y0), min(1024, size - x0)
                yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
                rng = np.random.default_rng(y0 * 7919 + x0)
                base = 110 + 60 * np.sin(xx / 71.0) * np.cos(yy / 113.0)
                bands = [base + 25 * k + rng.normal(0, 10, (h, w)) for k in range(3)]
                dst.write(np.clip(bands, 0, 255).astype(np.uint8), window=Window(x0, y0, w, h))
    return path


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / b.abs().max())


class Check:
    """Collects table rows; a failing check records its error instead of stopping the script."""

    def __init__(self) -> None:
        self.rows: Rows = []

    def run(self, name: str, fn: Callable[[], str | Rows]) -> None:
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # report, keep going: one table in every case
            traceback.print_exc(file=sys.stderr)
            result = f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
        if isinstance(result, list):
            self.rows += result
        else:
            self.rows.append((name, result))
        print(f"[{time.perf_counter() - t:6.1f} s] {name}", file=sys.stderr, flush=True)


def logits_vs_cpu(device: torch.device, variants: list[str], size: int) -> str:
    from segnext_geo.inference import InferenceRunner
    from segnext_geo.models import build_model

    parts = []
    for v in variants:
        torch.manual_seed(0)
        model = build_model(v, 150).eval()
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ref = model(x)  # CPU fp32, unfused: the reference
        dev = InferenceRunner(model, device, precision="fp32")(x)
        parts.append(f"{v.upper()} {rel_diff(dev, ref):.1e}")
    return ", ".join(parts)


def bf16_labels(device: torch.device, variants: list[str], size: int) -> str:
    from segnext_geo.inference import InferenceRunner
    from segnext_geo.models import build_model

    parts = []
    for v in variants:
        torch.manual_seed(0)
        model = build_model(v, 150).eval()
        x = torch.randn(1, 3, size, size)
        fp32 = InferenceRunner(model, device, precision="fp32")(x)
        bf16_runner = InferenceRunner(model, device, precision="bf16")
        if bf16_runner.precision != "bf16":
            return f"no native bf16 on {device}"
        bf16 = bf16_runner(x)
        agree = float((bf16.argmax(1) == fp32.argmax(1)).float().mean())
        parts.append(f"{v.upper()} {agree:.2%} (rel diff {rel_diff(bf16, fp32):.1e})")
    return ", ".join(parts)


def predict_bytes(scene: Path, model: torch.nn.Module, out: Path, **opts: object) -> bytes:
    import rasterio

    from segnext_geo.inference import PredictOptions, predict_scene

    probs = out.with_name(out.stem + "_p.tif")
    predict_scene(scene, model, out, PredictOptions(**opts), probs_out=probs, overwrite=True, progress=False)  # type: ignore[arg-type]
    data = b""
    for p in (out, probs):
        with rasterio.open(p) as src:
            data += src.read().tobytes()
    return data


def batch_invariance(device: torch.device, scene: Path, tile: int, work: Path) -> Rows:
    from segnext_geo.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 16)
    common = {"device": str(device), "tile_size": tile, "overlap": tile // 4, "precision": "fp32"}
    det = [
        predict_bytes(scene, model, work / f"det{b}.tif", batch_size=b, deterministic=True, **common) for b in (1, 8)
    ]
    default = [predict_bytes(scene, model, work / f"def{b}.tif", batch_size=b, **common) for b in (1, 8)]
    same = "byte-identical" if det[0] == det[1] else "DIFFERENT (a defect)"
    ndiff = sum(a != b for a, b in zip(default[0], default[1], strict=True))
    batched = "byte-identical" if ndiff == 0 else f"{ndiff} bytes differ (batched kernels; expected)"
    return [
        ("predict batch 1 vs 8, --deterministic", same),
        ("predict batch 1 vs 8, default (batched)", batched),
    ]


def two_gpus(scene: Path, tile: int, work: Path) -> str:
    from segnext_geo.models import build_model

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return "skipped: fewer than two CUDA devices"
    torch.manual_seed(0)
    model = build_model("tiny", 16)
    common = {"tile_size": tile, "overlap": tile // 4, "batch_size": 8, "deterministic": True}
    a = predict_bytes(scene, model, work / "g0.tif", device="cuda:0", **common)
    b = predict_bytes(scene, model, work / "g1.tif", device="cuda:1", **common)
    return "byte-identical" if a == b else "DIFFERENT (a defect)"


def throughput(device: torch.device, scene: Path, size: int, tile: int, variants: list[str], modes: list[str]) -> Rows:
    """predict_scene with a runner per mode; bare forwards of the same runner over as many batches."""
    from segnext_geo.inference import InferenceRunner, PredictOptions, TileGrid, predict_scene
    from segnext_geo.models import build_model

    rows: Rows = []
    batch = 8
    grid = TileGrid(size, size, tile, tile // 4, 4096)
    for v in variants:
        torch.manual_seed(0)
        model = build_model(v, 16)
        for mode in modes:
            precision, compile_mode = {"fp32 eager": ("fp32", "off"), "bf16 eager": ("bf16", "off")}.get(
                mode, ("bf16", "on")
            )
            name = f"predict {v.upper()} tile {tile}, {mode}"
            try:
                runner = InferenceRunner(model, device, precision=precision, compile=compile_mode)  # type: ignore[arg-type]
                opts = PredictOptions(device=str(device), tile_size=tile, overlap=tile // 4, batch_size=batch)
                x = torch.randn(batch, 3, tile, tile)
                runner(x)  # warm-up: kernels, CUDA graphs and compilation happen here
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    predict_scene(scene, runner, Path(tmp) / "c.tif", opts, progress=False)
                    wall = time.perf_counter() - t
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                xd = x.to(device)  # bare forwards: input already on the device, as predict's uploads overlap
                full, rest = divmod(len(grid), batch)
                t = time.perf_counter()
                for _ in range(full):
                    runner(xd)
                if rest:
                    runner(xd[:rest])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                bare = time.perf_counter() - t
                mpix = size * size / 1e6 / wall
                mem = f", peak GPU memory {peak:.1f} GiB" if device.type == "cuda" else ""
                rows.append(
                    (name, f"{mpix:.3g} MPix/s, {mpix * 0.25:.3g} km²/s at 0.5 m, predict/bare {wall / bare:.2f}{mem}")
                )
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                rows.append((name, f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:160]}"))
    return rows


def train_rows(device: torch.device) -> Rows:
    try:
        helper = importlib.import_module("_gpu_train")
    except ModuleNotFoundError:
        return [("training checks", "skipped: benchmarks/_gpu_train.py is not there")]
    return [(str(a), str(b)) for a, b in helper.train_checks(device)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-only", action="store_true", help="run on the CPU with small sizes (no GPU needed)")
    ap.add_argument("--device", default="cuda:0", help="the CUDA device to check (default cuda:0)")
    ap.add_argument("--compile-budget", type=float, default=200.0, help="skip compiled runs after this many seconds")
    args = ap.parse_args()
    cpu = args.cpu_only or not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device(args.device)
    if cpu:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    variants = ["t"] if cpu else ["t", "s", "b", "l"]
    size, tile, check_size = (256, 128, 64) if cpu else (4096, 1024, 512)
    t0 = time.perf_counter()
    check = Check()
    name = "cpu" if cpu else f"{torch.cuda.get_device_name(device)} ({device})"
    with tempfile.TemporaryDirectory(prefix="segnext-gpu-check-") as tmp:
        work = Path(tmp)
        scene = write_scene(work / "scene.tif", size)
        check.run(
            f"fp32 {device.type} vs CPU fp32 logits, max rel diff",
            lambda: logits_vs_cpu(device, ["t", "b"][: 1 if cpu else 2], check_size),
        )
        check.run(
            f"bf16 vs fp32 labels on {device.type}",
            lambda: bf16_labels(device, ["t", "b"][: 1 if cpu else 2], check_size),
        )
        check.run("batch invariance", lambda: batch_invariance(device, scene, tile, work))
        check.run("cuda:1 vs cuda:0, --deterministic", lambda: two_gpus(scene, tile, work))
        modes = ["fp32 eager", "bf16 eager"]
        if not cpu:
            modes.append("bf16 compiled")
        for v in variants:
            run_modes = [m for m in modes if m != "bf16 compiled" or time.perf_counter() - t0 < args.compile_budget]
            check.run(
                f"throughput {v}",
                lambda v=v, run_modes=run_modes: throughput(device, scene, size, tile, [v], run_modes),
            )
            if "bf16 compiled" in modes and "bf16 compiled" not in run_modes:
                check.rows.append(
                    (f"predict {v.upper()} tile {tile}, bf16 compiled", "skipped: --compile-budget reached")
                )
        check.run("training", lambda: train_rows(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    check.rows.append(("peak host RSS of this script", f"{rss:.0f} MiB"))
    print(f"\nsegnext-geo GPU check on {name}, torch {torch.__version__}, {time.perf_counter() - t0:.0f} s\n")
    print("| check | result |")
    print("|---|---|")
    for a, b in check.rows:
        print(f"| {a} | {b} |")


if __name__ == "__main__":
    main()
