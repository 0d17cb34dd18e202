"""How long SegNeXt-T takes on this machine to reach mIoU >= 0.8 on held-out synthetic shapes, and its
training throughput against a bare PyTorch loop measured in the same run.

    python benchmarks/train_synthetic.py [--target 0.8] [--max-iters 400] [--size 96] [--batch 8]

The trainer run is the real one (``segnext_geo.train.fit.train``: Lightning, the mmseg augmentation,
``num_workers: 0`` so the data pipeline runs in the training process, validation every
``--val-every`` steps on 32 held-out images). The baseline is a bare loop (forward + cross-entropy +
backward + AdamW on one fixed batch, a second model). One baseline step runs right after every
trainer step, so both see the same machine load (the CPU may be shared); the ratio of their median
step times is the cost of everything around the network (data pipeline, Lightning, logging). The
baseline's time is not counted in the time to the target. Peak RSS is that of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def bare_step(size: int, batch: int) -> Callable[[], float]:
    """A function running one bare training step of a second SegNeXt-T and returning its seconds."""
    import torch.nn.functional as F

    from segnext_geo.models import build_model
    from segnext_geo.train.config import OptimSection, ScheduleSection
    from segnext_geo.train.recipe import build_optimizer

    gen = torch.Generator().manual_seed(0)
    model = build_model("tiny", 4).train()
    opt, sched = build_optimizer(model, OptimSection(lr=6e-4), ScheduleSection(iters=100_000, warmup_iters=1))
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, 4, (batch, size, size), generator=gen)

    def step() -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return time.perf_counter() - t0

    return step


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

    baseline = bare_step(args.size, args.batch)

    class Stopwatch(pl.Callback):
        """Trainer and baseline step times, and the training time when val mIoU first reaches the target."""

        def __init__(self) -> None:
            self.t_start = 0.0
            self.ours: list[float] = []
            self.base: list[float] = []
            self.reached: tuple[float, int, float] | None = None
            self.history: list[tuple[int, float]] = []

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.t_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            self.ours.append(time.perf_counter() - self._t)
            self.base.append(baseline())

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            miou = float(trainer.callback_metrics["val/mIoU"])
            self.history.append((trainer.global_step, miou))
            if self.reached is None and miou >= args.target:
                elapsed = time.perf_counter() - self.t_start - sum(self.base)
                self.reached = (elapsed, trainer.global_step, miou)
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
        train(cfg, callbacks=[watch])
    ours, base = statistics.median(watch.ours[2:]), statistics.median(watch.base[2:])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine        : {os.cpu_count()} CPU cores, torch threads {args.threads}, torch {torch.__version__}")
    print(f"task           : synthetic shapes {args.size}px, 4 classes, 128 train / 32 val, batch {args.batch}")
    print("val mIoU       : " + ", ".join(f"{s}:{m:.3f}" for s, m in watch.history))
    if watch.reached:
        s, step, miou = watch.reached
        print(
            f"time to mIoU>={args.target:.2f}: {s:.1f} s (validation and checkpoints included; {step} iterations, "
            f"{step * args.batch} images, mIoU {miou:.3f})"
        )
    else:
        print(f"time to mIoU>={args.target:.2f}: not reached in {args.max_iters} iterations")
    print(
        f"training speed : {args.batch / ours:.1f} images/s (trainer, median step {1000 * ours:.0f} ms) vs "
        f"{args.batch / base:.1f} images/s (bare loop, {1000 * base:.0f} ms): ratio {base / ours:.2f}"
    )
    print(f"peak RSS       : {rss:.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
