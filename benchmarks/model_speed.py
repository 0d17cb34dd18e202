"""Eval forward speed of every SegNeXt variant: plain eager fp32 against the optimised path.

Baseline ("eager"): the model as the reference runs it: fp32, NCHW, unfused, ``torch.no_grad``,
random NMF bases drawn per call (``nmf_init="reference"``).
Optimised: :class:`segnext_geo.models.optimize.InferenceRunner`: BN/layer-scale folding,
channels_last, ``inference_mode``, bf16 autocast where the device has native bf16 (NMF in fp32),
optionally ``torch.compile``.

Prints, per variant and size: ms per image for both, the speed-up, the optimised output's
max |diff| relative to the largest logit and its label agreement with the fp32 output of the
same NMF bases, GMACs (counted with torch.utils.flop_counter), and the fraction of the peak
measured in the same run with a large GEMM (fp32 and bf16). Ends with the peak RSS.

    python benchmarks/model_speed.py                       # all variants, 512^2 and 1024^2
    python benchmarks/model_speed.py --quick               # tiny at 512^2 only (smoke run)
    python benchmarks/model_speed.py --variants t,s --sizes 512 --compile
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from segnext_geo.models import build_model
from segnext_geo.models.optimize import InferenceRunner, bf16_supported, resolve_device


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """Measured dense GEMM throughput in FLOP/s (the practical peak of this device and dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = timed(lambda: a @ b, 3, device)
    return 2 * n**3 / s


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="t,s,b,l")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile on the optimised path")
    ap.add_argument("--quick", action="store_true", help="tiny at 512^2, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.variants, args.sizes, args.repeats = "t", "512", 1
    device = resolve_device(args.device)
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    peak32 = gemm_peak(device, torch.float32)
    peak16 = gemm_peak(device, torch.bfloat16) if bf16_supported(device) else float("nan")
    print(f"measured GEMM peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s")
    header = (
        f"{'variant':<10}{'size':>6}{'GMACs':>7}{'path':>24}{'ms':>8}{'speed-up':>9}"
        f"{'rel diff':>10}{'labels':>9}{'% peak':>8}"
    )
    print(header)
    for v in args.variants.split(","):
        torch.manual_seed(0)
        eager = build_model(v, 150, nmf_init="reference").eval().to(device)
        det = build_model(v, 150).eval().to(device)
        det.load_state_dict(eager.state_dict())
        runners = {"fp32": InferenceRunner(det, device=device, precision="fp32", compile=args.compile)}
        if bf16_supported(device):
            runners["bf16"] = InferenceRunner(det, device=device, precision="bf16", compile=args.compile)
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.randn(1, 3, size, size, device=device)
            macs = count_macs(det, x)

            def run_eager(x: torch.Tensor = x, m: torch.nn.Module = eager) -> torch.Tensor:
                with torch.no_grad():
                    return m(x)

            t_eager = timed(run_eager, args.repeats, device)
            with torch.no_grad():
                ref = det(x)  # same (deterministic) NMF bases as the runners, fp32, unfused
            pct = 2 * macs / t_eager / peak32 * 100
            row = f"{'segnext_' + v:<10}{size:>6}{macs / 1e9:>7.1f}"
            print(f"{row}{'eager fp32 (reference)':>24}{t_eager * 1e3:>8.0f}{1.0:>8.2f}x{'-':>10}{'-':>9}{pct:>7.1f}%")
            for name, runner in runners.items():
                t_opt = timed(lambda x=x, r=runner: r(x), args.repeats, device)
                out = runner(x)
                rel = float((out - ref).abs().max() / ref.abs().max())
                agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
                pct = 2 * macs / t_opt / (peak16 if name == "bf16" else peak32) * 100
                label = f"fused+NHWC+{name}{'+compile' if args.compile else ''}"
                print(
                    f"{row}{label:>24}{t_opt * 1e3:>8.0f}{t_eager / t_opt:>8.2f}x{rel:>10.1e}"
                    f"{agree * 100:>8.2f}%{pct:>7.1f}%"
                )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
