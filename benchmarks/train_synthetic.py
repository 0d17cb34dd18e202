"""How long SegNeXt-T takes on this machine to reach mIoU >= 0.8 on held-out synthetic shapes, and its
training throughput against a bare PyTorch loop measured in the same run.

    python benchmarks/train_synthetic.py [--target 0.8] [--max-iters 400] [--size 96] [--batch 8]

The trainer run is the real one (``segnext_geo.train.fit.train``: Lightning, the mmseg augmentation,
validation every ``--val-every`` steps on 32 held-out images). The baseline is a plain loop of
forward + cross-entropy + AdamW steps on one fixed batch, so the ratio (median step times, with
``num_workers: 0``) is the cost of everything around the network (data pipeline in the main
process, Lightning, logging). Peak RSS is that of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def bare_loop_images_per_s(size: int, batch: int, steps: int) -> float:
    """Forward + loss + backward + AdamW step on a fixed random batch: the network's own speed.

    Uses the median step time (robust to other processes sharing the CPU).
    """
    import torch.nn.functional as F

    from segnext_geo.models import build_model
    from segnext_geo.train.config import OptimSection, ScheduleSection
    from segnext_geo.train.recipe import build_optimizer

    torch.manual_seed(0)
    model = build_model("tiny", 4).train()
    opt, sched = build_optimizer(model, OptimSection(lr=6e-4), ScheduleSection(iters=steps + 2, warmup_iters=1))
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 4, (batch, size, size))
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times[2:])  # two warm-up steps left out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.8, help="val mIoU to reach")
    ap.add_argument("--max-iters", type=int, default=400)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--size", type=int, default=96, help="image side in px")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import lightning.pytorch as pl

    from segnext_geo.train.config import load_config
    from segnext_geo.train.fit import train

    class Stopwatch(pl.Callback):
        """Training-only time and images, and the wall time when val mIoU first reaches the target."""

        def __init__(self) -> None:
            self.t_start = 0.0
            self.steps: list[float] = []
            self.reached: tuple[float, int, float] | None = None
            self.history: list[tuple[int, float]] = []

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.t_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            self.steps.append(time.perf_counter() - self._t)

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            miou = float(trainer.callback_metrics["val/mIoU"])
            self.history.append((trainer.global_step, miou))
            if self.reached is None and miou >= args.target:
                self.reached = (time.perf_counter() - self.t_start, trainer.global_step, miou)
                trainer.should_stop = True

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            Path(__file__).resolve().parents[1] / "configs" / "cpu_smoke.yaml",
            [
                f"data.options={{num_train: 128, num_val: 32, size: {args.size}, num_classes: 4}}",
                f"data.batch_size={args.batch}",
                f"data.img_scale={args.size}",
                f"data.crop_size={args.size}",
                f"schedule.iters={args.max_iters}",
                "schedule.warmup_iters=20",
                f"trainer.val_interval={args.val_every}",
                f"trainer.out_dir={tmp}/run",
                "trainer.progress_bar=false",
            ],
        )
        watch = Stopwatch()
        t0 = time.perf_counter()
        train(cfg, callbacks=[watch])
        total = time.perf_counter() - t0
    ours = args.batch / statistics.median(watch.steps[2:])  # median step: robust to a shared CPU
    base = bare_loop_images_per_s(args.size, args.batch, steps=20)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine        : {os.cpu_count()} CPU cores, torch threads {args.threads}, torch {torch.__version__}")
    print(f"task           : synthetic shapes {args.size}px, 4 classes, 128 train / 32 val, batch {args.batch}")
    print("val mIoU       : " + ", ".join(f"{s}:{m:.3f}" for s, m in watch.history))
    if watch.reached:
        s, step, miou = watch.reached
        print(
            f"time to mIoU>={args.target:.2f}: {s:.1f} s of training ({step} iterations, {step * args.batch} images, "
            f"mIoU {miou:.3f})"
        )
    else:
        print(f"time to mIoU>={args.target:.2f}: not reached in {args.max_iters} iterations")
    print(f"whole run      : {total:.1f} s (imports excluded, validation and checkpoints included)")
    print(f"training speed : {ours:.1f} images/s (trainer) vs {base:.1f} images/s (bare loop), ratio {ours / base:.2f}")
    print(f"step time      : median {1000 * statistics.median(watch.steps[2:]):.0f} ms (trainer), batch {args.batch}")
    print(f"peak RSS       : {rss:.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
