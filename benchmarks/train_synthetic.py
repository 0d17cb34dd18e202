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

The loader part (``--loader-only`` runs just it) times what one DataLoader worker does per training
sample of the iSAID recipe at 896^2: read an image/annotation PNG pair from disk (an mmseg-layout
folder of 896^2 synthetic patches written first), resize by 0.5-2.0, RandomCrop 896 with
cat_max_ratio 0.75, flip, PhotoMetricDistortion, normalise and pad, through the real
``SegDataset`` and ``ISAID`` source, one torch thread (as in a worker). Beside it, the model's
training images/s at 896^2 (a bare SegNeXt-T step, batch ``--model-batch``, on ``--device``): the
ratio of the two is the number of workers that keep that device fed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


#: The loader as it was when issue 13 was filed (matplotlib colour conversion, whole-image float resize).
BASELINE_REV = "e0bb949"


def baseline_transforms(rev: str, tmp: Path) -> Any | None:
    """``segnext_geo/data/transforms.py`` as of git revision ``rev``, imported beside today's (None without git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        text = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:segnext_geo/data/transforms.py"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = tmp / f"transforms_{rev}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"segnext_geo.data._transforms_{rev}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # its relative imports resolve inside segnext_geo.data
    return module


def loader_speed(size: int, samples: int, tmp: Path, baseline_rev: str | None) -> dict[str, Any]:
    """Seconds per training sample of the iSAID pipeline at ``size``^2 (one thread): today's, the baseline's
    (alternating sample by sample, so both see the same machine load) and today's stages."""
    import numpy as np
    from PIL import Image

    from segnext_geo.data import transforms as T
    from segnext_geo.data.dataset import SegDataset
    from segnext_geo.data.isaid import ISAID, ISAID_PALETTE, MASK_SUFFIX
    from segnext_geo.data.palette import save_palette_png
    from segnext_geo.data.synthetic import SyntheticShapes
    from segnext_geo.models.meta import IMAGENET_MEAN, IMAGENET_STD

    shapes = SyntheticShapes("train", 8, size=size, num_classes=8)
    for split in ("img_dir/train", "ann_dir/train"):
        (tmp / "isaid" / split).mkdir(parents=True, exist_ok=True)
    for i in range(len(shapes)):
        image, label = shapes.load(i)
        Image.fromarray(image).save(tmp / "isaid" / "img_dir" / "train" / f"P{i:04d}_0_{size}_0_{size}.png")
        ann = tmp / "isaid" / "ann_dir" / "train" / f"P{i:04d}_0_{size}_0_{size}{MASK_SUFFIX}.png"
        save_palette_png(label, ISAID_PALETTE, ann)
    source = ISAID(tmp / "isaid", "train")
    recipe = (IMAGENET_MEAN, IMAGENET_STD, (size, size), (0.5, 2.0), (size, size), 0.75, 0.5, True)
    ds = SegDataset(source, T.TrainPipeline(*recipe), 16)
    old = baseline_transforms(baseline_rev, tmp) if baseline_rev else None
    old_pipe = old.TrainPipeline(*recipe) if old is not None else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    times: dict[str, list[float]] = {"today": [], "baseline": []}
    for k in range(samples):
        key = k % len(source)
        t0 = time.perf_counter()
        ds[(key, 0, k)]  # read, check, augment, normalise: what a worker does per sample
        times["today"].append(time.perf_counter() - t0)
        if old_pipe is not None:
            t0 = time.perf_counter()
            image, label = ds._load(key)
            old_pipe(image, label, np.random.default_rng([0, 0, k]))
            times["baseline"].append(time.perf_counter() - t0)
    # today's stages on their own (the pipeline's draws, so the same work)
    stages: dict[str, list[float]] = {"read": [], "resize+crop+flip": [], "photometric": [], "normalize+pad": []}
    for k in range(samples):
        t0 = time.perf_counter()
        image, label = source.load(k % len(source))
        t1 = time.perf_counter()
        rng = np.random.default_rng([0, 0, k])
        ratio = rng.random() * 1.5 + 0.5
        shape = T.rescale_size(size, size, (int(size * ratio), int(size * ratio)))
        label = T.resize_label(label, shape)
        box = T.crop_box(label, (size, size), rng, 0.75)
        chw = T._resized_crop_chw(image, shape, box, flip=rng.random() < 0.5)
        t2 = time.perf_counter()
        chw = T._photometric_chw(chw, rng)
        t3 = time.perf_counter()
        T._normalize_chw(chw, IMAGENET_MEAN, IMAGENET_STD)
        t4 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name].append(dt)
    torch.set_num_threads(threads)
    return {"times": times, "stages": {k: statistics.mean(v) for k, v in stages.items()}}


def model_speed(size: int, batch: int, device: str, steps: int = 2) -> float:
    """Training images/s of a bare SegNeXt-T step (forward, loss, backward, AdamW) on ``size``^2 images."""
    import torch.nn.functional as F

    from segnext_geo.models import build_model
    from segnext_geo.train.config import OptimSection, ScheduleSection
    from segnext_geo.train.recipe import build_optimizer

    dev = torch.device(device)
    model = build_model("tiny", 16, nmf_train_init="reference").to(dev).train()
    opt, _ = build_optimizer(model, OptimSection(), ScheduleSection())
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 16, (batch, size, size), device=dev)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times[1:])


def report_loader(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        res = loader_speed(args.loader_size, args.loader_samples, Path(tmp), args.baseline_rev)
    model_ips = model_speed(args.loader_size, args.model_batch, args.device)

    def rate(ts: list[float]) -> float:
        return len(ts) / sum(ts)  # throughput: the mean, not the median (a few samples are slow)

    def line(ts: list[float]) -> str:
        return (
            f"{rate(ts):.2f} images/s per worker (mean {1000 * statistics.mean(ts):.0f} ms, median "
            f"{1000 * statistics.median(ts):.0f} ms, max {1000 * max(ts):.0f} ms per sample)"
        )

    today, base = res["times"]["today"], res["times"]["baseline"]
    print(f"loader         : iSAID recipe at {args.loader_size}^2 from PNG files, {len(today)} samples, 1 thread")
    print(f"  today        : {line(today)}")
    if base:
        print(f"  baseline     : {line(base)} (git {args.baseline_rev}, alternating sample by sample)")
        print(f"  speed-up     : {rate(today) / rate(base):.2f}x per sample")
    print("  today's stages: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in res["stages"].items()))
    precision = "bf16" if args.device.startswith("cuda") else "fp32"
    print(
        f"model          : {model_ips:.2f} training images/s at {args.loader_size}^2 on {args.device} "
        f"(SegNeXt-T, batch {args.model_batch}, {precision})"
    )
    print(f"workers needed : {model_ips / rate(today):.2f} per {args.device} device to keep the model fed")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.8, help="val mIoU to reach")
    ap.add_argument("--max-iters", type=int, default=400)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--size", type=int, default=96, help="image side in px")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--loader-only", action="store_true", help="only the loader vs model images/s part")
    ap.add_argument("--no-loader", action="store_true", help="skip the loader part")
    ap.add_argument("--loader-size", type=int, default=896)
    ap.add_argument("--loader-samples", type=int, default=48)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the loader to compare with")
    ap.add_argument("--model-batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_loader:
        report_loader(args)
    if args.loader_only:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS       : {rss:.0f} MiB")
        return

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
