"""The download-free demo: synthesise, train briefly, predict a large scene, vectorise, score, picture.

Steps (each is the real library code path, not a shortcut):

1. write synthetic training and validation scenes (GeoTIFF image + label raster, UTM 32N, 0.5 m);
2. train SegNeXt-T on them with the Lightning trainer (``dataset: geotiff``, random geo-sampled
   chips), sizing the schedule to the time budget from a measured step time;
3. synthesise the demo scene (``size`` px, nodata corners like a rotated footprint) and its truth;
4. run ``predict_scene`` on it: blended tiles, streamed class GeoTIFF, then polygons (GeoPackage);
5. score the class raster against the truth block by block (IoU per class);
6. draw ``preview.png``: the scene with the polygons beside the truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .synthetic import DEMO_CLASSES, DEMO_PALETTE, synthesize, write_scene

__all__ = ["DemoResult", "run_demo"]

CHIP = 128
BATCH = 8


@dataclass
class DemoResult:
    """Paths written by the demo and the scores of the predicted scene."""

    out_dir: Path
    scene: Path
    truth: Path
    classes: Path
    polygons: Path
    preview: Path
    checkpoint: Path
    iou: dict[str, float] = field(default_factory=dict)
    miou: float = float("nan")
    polygon_count: int = 0
    train_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[demo] {msg}", flush=True)


def _write_training_scenes(root: Path, seed: int) -> None:
    """6 training scenes (768 px) and 1 validation scene (512 px) at distinct places."""
    from rasterio.transform import from_origin

    for split, n, size, offset in (("train", 6, 768, 100), ("val", 1, 512, 900)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            s = synthesize(size, seed=seed * 1000 + offset + i)
            s.transform = from_origin(400_000.0 + 2_000.0 * (offset + i), 5_200_000.0, 0.5, 0.5)
            write_scene(s, root / split / "images" / f"s{i}.tif", root / split / "labels" / f"s{i}.tif")


def _steps_for_budget(seconds: float, device: str, data: Path, chip: int = CHIP, batch: int = BATCH) -> tuple[int, str]:
    """Time a SegNeXt-T training step on ``batch`` chips and reading those chips; size the schedule to ``seconds``."""
    import torch
    import torch.nn.functional as F

    from .inference.device import resolve_device
    from .models import build_model

    dev = resolve_device(device)
    model = build_model("tiny", len(DEMO_CLASSES)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, chip, chip, device=dev)
    y = torch.randint(0, len(DEMO_CLASSES), (batch, chip, chip), device=dev)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = min(times[1:])
    from .data.torchgeo import GeoTiffSource

    src = GeoTiffSource(data / "train" / "images", data / "train" / "labels", chip, train=True, length=batch)
    t = time.perf_counter()
    for key in src.epoch_keys(0, 0):
        src.load(key)
    read = time.perf_counter() - t
    # augmentation, logging and the final validation add about a fifth
    steps = int(seconds / ((step + read) * 1.2))
    return max(20, min(steps, 4000)), dev.type


def _score(classes: Path, truth: Path) -> dict[str, Any]:
    """IoU per class of a class raster against the truth, read block by block."""
    import rasterio
    import torch

    from .train.metrics import confusion_matrix, metrics_from_confusion

    k = len(DEMO_CLASSES)
    conf = torch.zeros((k, k), dtype=torch.int64)
    with rasterio.open(classes) as p, rasterio.open(truth) as t:
        for _, window in t.block_windows(1):
            pred = torch.from_numpy(p.read(1, window=window).astype(np.int64))
            true = torch.from_numpy(t.read(1, window=window).astype(np.int64))
            valid = pred != 255
            true = torch.where(valid, true, torch.full_like(true, 255))
            conf += confusion_matrix(pred.clamp(max=k - 1), true, k)
    return metrics_from_confusion(conf, DEMO_CLASSES)


def run_demo(
    out_dir: str | Path = "demo",
    size: int = 4096,
    minutes: float = 3.0,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
    steps: int | None = None,
    chip: int = CHIP,
    batch: int = BATCH,
) -> DemoResult:
    """Run the whole demo into ``out_dir`` (see the module docstring).

    ``minutes`` is the training budget; the number of steps is sized to it from a measured step
    time unless ``steps`` is given. Training draws ``batch`` random ``chip`` px chips per step.
    """
    from .inference import PredictOptions, predict_scene
    from .preview import render_preview
    from .train.config import load_config
    from .train.fit import train

    out = Path(out_dir)
    if size < 256:
        raise UserError(f"--size: {size} is too small for the demo (at least 256 px)")
    if minutes <= 0:
        raise UserError(f"--minutes: {minutes} must be positive")
    if steps is not None and steps < 1:
        raise UserError(f"--steps: {steps} must be at least 1")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out-dir: {out} is not empty; pass --overwrite to replace the demo in it")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data = out / "data"
    _log("writing synthetic training scenes (6 x 768^2 + 1 validation scene)", quiet)
    _write_training_scenes(data, seed)
    timings["synthesise training data"] = time.perf_counter() - t

    t = time.perf_counter()
    if steps is None:
        steps, dev = _steps_for_budget(minutes * 60.0, device, data, chip, batch)
    else:
        from .inference.device import resolve_device

        dev = resolve_device(device).type
    _log(f"training SegNeXt-T for {steps} steps of {batch} chips of {chip}^2 px on {dev} (~{minutes:g} min)", quiet)
    sets = [
        "model.variant=segnext_t",
        "model.drop_path_rate=0.0",
        "data.dataset=geotiff",
        f"data.train_images={data / 'train' / 'images'}",
        f"data.train_labels={data / 'train' / 'labels'}",
        f"data.val_images={data / 'val' / 'images'}",
        f"data.val_labels={data / 'val' / 'labels'}",
        f"data.class_names={json.dumps(list(DEMO_CLASSES))}",
        f"data.palette={json.dumps([list(c) for c in DEMO_PALETTE])}",
        f"data.chip_size={chip}",
        f"data.crop_size=[{chip},{chip}]",
        f"data.img_scale=[{chip},{chip}]",
        "data.ratio_range=[1.0,1.0]",
        "data.test_scale=null",
        f"data.batch_size={batch}",
        "data.val_batch_size=4",
        "data.num_workers=0",
        f"data.samples_per_epoch={steps * batch}",
        f"data.val_stride={max(chip, 128)}",
        "optim.lr=0.0006",
        f"schedule.iters={steps}",
        f"schedule.warmup_iters={max(10, steps // 20)}",
        f"trainer.out_dir={out / 'run'}",
        f"trainer.val_interval={steps}",
        f"trainer.log_interval={max(1, steps // 20)}",
        f"trainer.accelerator={'gpu' if dev == 'cuda' else 'cpu'}",
        f"trainer.precision={'bf16-mixed' if dev == 'cuda' else '32-true'}",
        f"trainer.seed={seed}",
        f"trainer.progress_bar={'false' if quiet else 'true'}",
        "trainer.tensorboard=false",
    ]
    result = train(load_config(None, sets), overwrite=True)
    ckpt = result.best or result.last
    assert ckpt is not None
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    scene, truth = out / "scene.tif", out / "truth.tif"
    _log(f"synthesising the {size}^2 px demo scene", quiet)
    write_scene(synthesize(size, seed=seed * 1000 + 7), scene, truth)
    timings["synthesise scene"] = time.perf_counter() - t

    t = time.perf_counter()
    classes, polygons = out / "classes.tif", out / "polygons.gpkg"
    _log("predicting the scene: blended tiles -> classes.tif -> polygons.gpkg", quiet)
    pred = predict_scene(
        scene,
        ckpt,
        polygons,
        PredictOptions(device=device, tile_size=512, overlap=128),
        mask_out=classes,
        overwrite=True,
        progress=not quiet,
    )
    timings["predict + vectorize"] = time.perf_counter() - t

    metrics = _score(classes, truth)
    iou = {c["name"]: c["IoU"] for c in metrics["per_class"]}
    t = time.perf_counter()
    preview = render_preview(
        scene,
        out / "preview.png",
        polygons=polygons,
        mask=classes,
        truth=truth,
        overwrite=True,
        title=f"segnext-geo demo: SegNeXt-T after {result.steps} training steps "
        f"({timings['train'] / 60:.1f} min), scene mIoU {metrics['mIoU']:.3f}",
    )
    timings["preview"] = time.perf_counter() - t
    res = DemoResult(
        out,
        scene,
        truth,
        classes,
        polygons,
        preview,
        Path(ckpt),
        iou,
        metrics["mIoU"],
        int(pred.polygons or 0),
        result.steps,
        timings,
    )
    (out / "scores.json").write_text(json.dumps({"mIoU": res.miou, "IoU": iou, "timings_s": timings}, indent=2))
    return res
