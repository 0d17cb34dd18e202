"""Eval forward speed of every SegNeXt variant: the plain eager reference against the runner predict uses.

Baseline ("eager"): the model as the reference runs it: fp32, NCHW, unfused, ``torch.no_grad``,
random NMF bases drawn per call (``nmf_init="reference"``).
Runner paths (:class:`segnext_geo.inference.InferenceRunner`, the one ``predict`` uses):

- ``default``: what ``predict`` runs on this device by default: on the CPU fp32, BN/layer-scale
  folding, fused oneDNN kernels (GELU and the element-wise ops after convolutions as post-ops),
  channels_last, image by image;
- ``bf16``: bf16 autocast (NMF in fp32), when the CPU has native bf16;
- ``compiled`` (``--compile``): inductor with ``freezing``; its compile time is measured cold
  (an empty inductor cache) and warm (the on-disk cache of the first), and the per-megapixel
  gain over ``default`` gives the break-even point that ``--compile auto`` uses.

Timings are interleaved (eager, default, ..., eager, default, ...) and their medians compared,
so a machine whose load drifts affects both sides alike; ``--clock cpu`` runs one torch thread
and times its CPU time instead of the wall clock, which other jobs on the machine barely move.
Prints ms per image, the ratio to eager (target: default <= 0.5x for T and B at 512^2), the max
|diff| relative to the largest logit and the label agreement with the fp32 output of the same NMF
bases, GMACs and % of a measured GEMM peak. Two more rows time exactly what ``predict`` runs per
tile, ``runner.probabilities`` of the default runner (its forward with the final upsampling done
on class planes, then an in-place softmax), against the same work done the plain way ("eager+smax":
the eager forward and ``softmax``); their "rel diff" is the max absolute probability difference.
Ends with the peak RSS.

    python benchmarks/model_speed.py                           # T, S, B, L at 512^2
    python benchmarks/model_speed.py --variants t,b --compile  # + compiled, compile cost, threshold
    python benchmarks/model_speed.py --quick                   # T at 256^2, 1 repeat (smoke run)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from segnext_geo.inference import InferenceRunner, resolve_device
from segnext_geo.inference.device import make_ops
from segnext_geo.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK: Callable[[], float] = time.perf_counter


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, measured round-robin after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = CLOCK()
            fn()
            sync(device)
            times[name].append(CLOCK() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """Measured dense GEMM throughput in FLOP/s (the practical peak of this device and dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = interleaved({"gemm": lambda: a @ b}, 3, device)["gemm"]
    return 2 * n**3 / s


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 2


def compile_child(variant: str, size: int, cache: str) -> None:
    """In a fresh process: time the first compiled call (compile + run) with the inductor cache in ``cache``."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    torch.manual_seed(0)
    runner = InferenceRunner(build_model(variant, 150), "cpu", compile="on")
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    runner(x)
    print(f"{time.perf_counter() - t:.3f}", flush=True)


def compile_cost(variant: str, size: int) -> tuple[float, float]:
    """Seconds of the first compiled call with a cold and then a warm inductor cache (fresh processes)."""
    cache = tempfile.mkdtemp(prefix="segnext-inductor-")
    try:
        cmd = [sys.executable, __file__, "--compile-child", variant, "--sizes", str(size), "--cache", cache]
        out = []
        for _ in range(2):
            r = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out.append(float(r.stdout.strip().splitlines()[-1]))
        return out[0], out[1]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="t,s,b,l")
    ap.add_argument("--sizes", default="512")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also the compiled path, its cost and break-even")
    ap.add_argument("--quick", action="store_true", help="T at 256^2, 1 repeat")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: one torch thread, timed by its CPU time (robust when other jobs share the machine)",
    )
    ap.add_argument("--compile-child", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_child:
        compile_child(args.compile_child, int(args.sizes), args.cache)
        return
    if args.quick:
        args.variants, args.sizes, args.repeats = "t", "256", 1
    if args.clock == "cpu":
        global CLOCK
        torch.set_num_threads(1)
        CLOCK = time.thread_time
    device = resolve_device(args.device)
    native_bf16 = make_ops(device).bf16_native()
    print(
        f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | native bf16 {native_bf16}"
    )
    peak32 = gemm_peak(device, torch.float32)
    peak16 = gemm_peak(device, torch.bfloat16) if native_bf16 else float("nan")
    print(f"measured GEMM peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s")
    print(
        f"{'variant':<10}{'size':>6}{'GMACs':>7}{'path':>12}{'ms':>9}{'vs eager':>9}"
        f"{'rel diff':>10}{'labels':>10}{'% peak':>8}"
    )
    thresholds = []
    for v in args.variants.split(","):
        torch.manual_seed(0)
        eager = build_model(v, args.classes, nmf_init="reference").eval().to(device)
        det = build_model(v, args.classes).eval()
        det.load_state_dict(eager.state_dict())
        runners = {"default": InferenceRunner(det, device)}
        if native_bf16:
            runners["bf16"] = InferenceRunner(det, device, precision="bf16")
        if args.compile:
            runners["compiled"] = InferenceRunner(det, device, compile="on")
        det = det.to(device)
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.randn(1, 3, size, size, device=device)
            macs = count_macs(det, x)

            def run_eager(x: torch.Tensor = x, m: torch.nn.Module = eager) -> torch.Tensor:
                with torch.no_grad():
                    return m(x)

            def run_eager_softmax(x: torch.Tensor = x, m: torch.nn.Module = eager) -> torch.Tensor:
                with torch.no_grad():
                    return m(x).softmax(1)

            fns: dict[str, Callable[[], object]] = {"eager": run_eager}
            fns |= {name: (lambda r=r, x=x: r(x)) for name, r in runners.items()}
            # what predict runs per tile: the default runner's probabilities (its forward with the
            # final upsampling done on class planes, then an in-place softmax) against the same
            # work done the plain way (eager forward + softmax)
            fns |= {"eager+softmax": run_eager_softmax, "predict": lambda r=runners["default"], x=x: r.probabilities(x)}
            times = interleaved(fns, args.repeats, device)
            with torch.no_grad():
                ref = det(x)  # same (deterministic) NMF bases as the runners, fp32, unfused
            row = f"{'segnext_' + v:<10}{size:>6}{macs / 1e9:>7.1f}"
            pct = 2 * macs / times["eager"] / peak32 * 100
            print(f"{row}{'eager fp32':>12}{times['eager'] * 1e3:>9.0f}{1.0:>8.2f}x{'-':>10}{'-':>10}{pct:>7.1f}%")
            for name, runner in runners.items():
                out = runner(x)
                rel = float((out - ref).abs().max() / ref.abs().max())
                agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
                pct = 2 * macs / times[name] / (peak16 if name == "bf16" else peak32) * 100
                print(
                    f"{row}{name:>12}{times[name] * 1e3:>9.0f}{times[name] / times['eager']:>8.2f}x{rel:>10.1e}"
                    f"{agree * 100:>9.4f}%{pct:>7.1f}%"
                )
            probs = runners["default"].probabilities(x)
            with torch.no_grad():
                ref_p = ref.softmax(1)
            rel = float((probs - ref_p).abs().max())
            agree = float((probs.argmax(1) == ref.argmax(1)).float().mean())
            print(f"{row}{'eager+smax':>12}{times['eager+softmax'] * 1e3:>9.0f}{1.0:>8.2f}x{'-':>10}{'-':>10}{'-':>8}")
            ratio = times["predict"] / times["eager+softmax"]
            print(
                f"{row}{'predict':>12}{times['predict'] * 1e3:>9.0f}{ratio:>8.2f}x{rel:>10.1e}"
                f"{agree * 100:>9.4f}%{'-':>8}"
            )
            if args.compile and device.type == "cpu":
                cold, warm = compile_cost(v, size)
                gain_per_mpix = (times["default"] - times["compiled"]) / (size * size / 1e6)
                row_t = cold / gain_per_mpix if gain_per_mpix > 0 else float("inf")
                warm_t = warm / gain_per_mpix if gain_per_mpix > 0 else float("inf")
                thresholds.append((v, size, cold, warm, gain_per_mpix, row_t, warm_t))
    for v, size, cold, warm, gain, t_cold, t_warm in thresholds:
        print(
            f"compile segnext_{v} at {size}^2: first call {cold:.1f} s cold, {warm:.1f} s with a warm inductor cache; "
            f"gain {gain * 1e3:.0f} ms per megapixel over 'default' -> break-even at {t_cold:.0f} MPix cold, "
            f"{t_warm:.0f} MPix warm"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
