"""Learning on real imagery: SegNeXt-T trained on real LoveDA tiles, scored on a spatial hold-out.

    python benchmarks/train_real.py [--iters 200] [--val-every 20] [--scale 0.5] [--crop 128] [--batch 8]

The three real LoveDA tiles of mmsegmentation's test data (``../shared/data/mmsegmentation/
pseudo_loveda_dataset``: 1024^2 RGB at 0.3 m, rural and urban China; masks 0 = no-data, 1..7 =
background, building, road, water, barren, forest, agriculture) are split in space: each tile is
cut into 4 x 4 blocks of 256^2 and one block per block-row and block-column (a Latin-square
pattern, 4 of 16) is held out; the other 12 train. LoveDA's own classes and mmseg's
``reduce_zero_label`` convention (0 -> ignored, 1..7 -> 0..6) are used throughout.

Training is the real thing: ``segnext_geo.train.fit.train`` (Lightning module, AdamW recipe with
head lr x10, warmup + poly schedule, the random NMF bases of the paper, mmseg's augmentation:
resize 0.75-1.5 around ``--scale`` of the native 0.3 m (0.5 as mmseg's LoveDA config),
RandomCrop with cat_max_ratio 0.75, flip, photometric distortion), from random weights (no
ImageNet backbone: no download), validating on the held-out blocks (at the same scale, scored at
full resolution) every ``--val-every`` steps. The baseline is the majority class of the training
blocks predicted everywhere on the held-out blocks, scored with the same metric code. Prints the
held-out mIoU after every validation and writes a figure (the curve against the baseline, and each
tile with its held-out blocks' truth and prediction) to ``docs/train_real_loveda.png``. Skips
(exit 0) when ``../shared`` is absent.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TILES = Path(os.environ.get("SEGNEXT_GEO_SHARED", ROOT.parent / "shared")) / "data/mmsegmentation/pseudo_loveda_dataset"
BLOCK = 256  # px: each 1024^2 tile is 4 x 4 blocks
PALETTE = [(255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128)]


def held_out(row: int, col: int) -> bool:
    """One block per block-row and block-column of a tile: (0, 1), (1, 0), (2, 3), (3, 2)."""
    return (row + col) % 4 == 1


class LoveDABlocks:
    """The training or held-out 256^2 blocks of every LoveDA tile, ``repeat`` times over.

    ``load(i)`` gives ``(image (256, 256, 3) uint8, label (256, 256) uint8)`` with mmseg's
    ``reduce_zero_label``: mask 0 (no-data) -> 255, 1..7 -> 0..6.
    """

    def __init__(self, folder: Path, held: bool, repeat: int = 1) -> None:
        from PIL import Image

        self.names = sorted(p.name for p in (folder / "img_dir").glob("*.png"))
        self.repeat = repeat
        self.blocks: list[tuple[str, int, int, np.ndarray, np.ndarray]] = []
        for name in self.names:
            image = np.asarray(Image.open(folder / "img_dir" / name).convert("RGB"))
            mask = np.asarray(Image.open(folder / "ann_dir" / name)).astype(np.int16)
            label = np.where(mask == 0, 255, mask - 1).astype(np.uint8)
            for r in range(image.shape[0] // BLOCK):
                for c in range(image.shape[1] // BLOCK):
                    if held_out(r, c) == held:
                        window = np.s_[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK]
                        self.blocks.append((name, r, c, image[window].copy(), label[window].copy()))

    @property
    def tiles(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(image, label) for *_, image, label in self.blocks]

    def __len__(self) -> int:
        return len(self.blocks) * self.repeat

    def load(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        *_, image, label = self.blocks[key % len(self.blocks)]
        return image, label

    def describe(self, key: int) -> str:
        name, r, c, *_ = self.blocks[key % len(self.blocks)]
        return f"LoveDA tile {name} block ({r}, {c})"


def majority_baseline(train: LoveDABlocks, val: LoveDABlocks, classes: list[str]) -> dict:
    """mIoU of predicting the training blocks' most frequent class everywhere on the held-out blocks."""
    from segnext_geo.train.metrics import confusion_matrix, metrics_from_confusion

    counts = sum(np.bincount(lab[lab != 255], minlength=len(classes)) for _, lab in train.tiles)
    majority = int(np.argmax(counts))
    conf = torch.zeros(len(classes), len(classes), dtype=torch.long)
    for _, lab in val.tiles:
        target = torch.from_numpy(lab.astype(np.int64))
        conf += confusion_matrix(torch.full_like(target, majority), target, len(classes), 255)
    return {"class": classes[majority], **metrics_from_confusion(conf, classes)}


def figure(history: list[tuple[int, float]], baseline: float, tiles: list, classes: list[str], out: Path) -> None:
    """The held-out mIoU curve against the baseline; per tile the image, and truth and prediction on its
    held-out blocks (``tiles``: ``(image, truth, prediction)``, 255 where not held out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segnext_geo.data.palette import ids_to_rgb

    fig = plt.figure(figsize=(11, 12), dpi=90)
    grid = fig.add_gridspec(1 + len(tiles), 3, height_ratios=[1.3] + [1] * len(tiles))
    ax = fig.add_subplot(grid[0, :])
    steps, mious = zip(*history, strict=True)
    ax.plot(steps, mious, "o-", color="tab:blue", label="SegNeXt-T (from random weights), held-out blocks")
    ax.axhline(baseline, color="tab:red", ls="--", label="majority class of the training blocks, everywhere")
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylabel("held-out mIoU")
    ax.set_ylim(0, max(max(mious), baseline) * 1.15)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Real LoveDA tiles: 12 of 16 blocks of each tile train, the outlined 4 are held out")
    for row, (image, truth, pred) in enumerate(tiles, start=1):
        for col, (panel, title) in enumerate(((image, "tile"), (truth, "truth"), (pred, "prediction (best.ckpt)"))):
            a = fig.add_subplot(grid[row, col])
            if panel.ndim == 2:
                shown = ids_to_rgb(panel, PALETTE)
                shown[panel == 255] = 40
                panel = shown
            a.imshow(panel)
            for r in range(4):
                for c in range(4):
                    if held_out(r, c):
                        a.add_patch(plt.Rectangle((c * BLOCK, r * BLOCK), BLOCK, BLOCK, fill=False, ec="black", lw=1.5))
            a.set_axis_off()
            if row == 1:
                a.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=np.array(c) / 255, ec="black", lw=0.5) for c in PALETTE]
    fig.legend(handles, classes, loc="lower center", ncol=len(classes), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--val-every", type=int, default=20)
    ap.add_argument("--scale", type=float, default=0.5, help="training and test resolution (1 = 0.3 m)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4, help="AdamW base lr (10x the paper's: short, from scratch)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "train_real_loveda.png")
    args = ap.parse_args()
    if not (TILES / "img_dir").is_dir():
        print(f"skipped: the real LoveDA tiles are not at {TILES} (../shared is absent)")
        return
    torch.set_num_threads(args.threads)

    import lightning.pytorch as pl

    from segnext_geo.data.build import DataBundle
    from segnext_geo.data.torchgeo import NAMED
    from segnext_geo.data.transforms import EvalPipeline
    from segnext_geo.models import load_model
    from segnext_geo.models.meta import IMAGENET_MEAN, IMAGENET_STD
    from segnext_geo.train.config import load_config
    from segnext_geo.train.evaluate import segment_logits
    from segnext_geo.train.fit import train
    from segnext_geo.train.metrics import confusion_matrix, metrics_from_confusion

    classes = list(NAMED["loveda"].class_names or ())
    train_src = LoveDABlocks(TILES, held=False, repeat=2)
    val_src = LoveDABlocks(TILES, held=True)
    bundle = DataBundle(
        dataset="LoveDA (spatial hold-out)",
        class_names=classes,
        palette=PALETTE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        bands=(1, 2, 3),
        sources={"train": train_src, "val": val_src},
    )
    base = majority_baseline(train_src, val_src, classes)
    side = round(BLOCK * args.scale)

    class Curve(pl.Callback):
        def __init__(self) -> None:
            self.history: list[tuple[int, float]] = []
            self.t0 = time.perf_counter()

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            miou = float(trainer.callback_metrics["val/mIoU"])
            self.history.append((trainer.global_step, miou))
            print(f"  step {trainer.global_step:4d}  held-out mIoU {miou:.3f}  ({time.perf_counter() - self.t0:.0f} s)")
            sys.stdout.flush()

    curve = Curve()
    print(f"tiles          : {', '.join(train_src.names)} from {TILES}")
    print(
        f"split          : {len(train_src.blocks)} blocks of {BLOCK}^2 train, {len(val_src.blocks)} held out "
        f"(4 of 16 per tile, one per block-row and -column)"
    )
    print(f"baseline       : majority class '{base['class']}' everywhere -> held-out mIoU {base['mIoU']:.3f}")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                "model.variant=segnext_t",
                f"data.batch_size={args.batch}",
                "data.num_workers=0",
                f"data.img_scale=[{side}, {side}]",  # blocks at --scale, then x 0.75-1.5
                "data.ratio_range=[0.75, 1.5]",
                f"data.crop_size={args.crop}",
                f"data.test_scale=[{side}, {side}]",  # held-out blocks at --scale; scored at full size
                f"optim.lr={args.lr}",
                f"schedule.iters={args.iters}",
                "schedule.warmup_iters=10",
                f"trainer.val_interval={args.val_every}",
                "trainer.log_interval=10",
                "trainer.accelerator=cpu",
                "trainer.progress_bar=false",
                "trainer.tensorboard=false",
                f"trainer.out_dir={tmp}/run",
            ],
        )
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(cfg, callbacks=[curve], data=bundle)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        model = load_model(result.best)

    # best.ckpt on the held-out blocks, and each tile's truth and prediction there (255 elsewhere)
    pipe = EvalPipeline(IMAGENET_MEAN, IMAGENET_STD, (side, side))
    conf = torch.zeros(len(classes), len(classes), dtype=torch.long)
    mosaics = {}
    for name, r, c, image, label in val_src.blocks:
        x, _ = pipe(image, label)
        pred = segment_logits(model, x[None], label.shape).argmax(1)[0]
        conf += confusion_matrix(pred, torch.from_numpy(label.astype(np.int64)), len(classes), 255)
        full = mosaics.setdefault(
            name, [None, np.full((1024, 1024), 255, np.uint8), np.full((1024, 1024), 255, np.uint8)]
        )
        window = np.s_[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK]
        full[1][window], full[2][window] = label, pred.numpy()
    from PIL import Image

    for name, full in mosaics.items():
        full[0] = np.asarray(Image.open(TILES / "img_dir" / name).convert("RGB"))
    final = metrics_from_confusion(conf, classes)
    best_step, best = max(curve.history, key=lambda h: h[1])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"training       : {result.steps} steps of {args.batch} crops of {args.crop}^2 in {seconds:.0f} s wall, "
        f"{cpu / 60:.1f} CPU-minutes ({os.cpu_count()} cores, torch threads {args.threads}, validation included)"
    )
    print("held-out mIoU  : " + ", ".join(f"{s}:{m:.3f}" for s, m in curve.history))
    print(
        f"best           : {best:.3f} at step {best_step} vs {base['mIoU']:.3f} majority baseline "
        f"(x{best / base['mIoU']:.2f})"
    )
    per_class = ", ".join(f"{r['name']} {r['IoU']:.2f}" for r in final["per_class"] if r["IoU"] == r["IoU"])
    print(f"best.ckpt IoU  : {per_class} (mIoU {final['mIoU']:.3f}, aAcc {final['aAcc']:.3f})")
    print(f"peak RSS       : {rss:.0f} MiB")
    figure(curve.history, base["mIoU"], [tuple(m) for m in mosaics.values()], classes, args.figure)
    print(f"figure         : {args.figure}")


if __name__ == "__main__":
    main()
