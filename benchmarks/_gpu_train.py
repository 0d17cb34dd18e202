"""Training checks that need a CUDA GPU, as rows of a table (imported by ``benchmarks/gpu_check.py``).

``train_checks(device)`` runs, on ``device`` (``cuda`` or ``cuda:N``):

- the real trainer (``segnext_geo.train.fit.train``: Lightning, the mmseg augmentation, validation,
  checkpoints) for a few steps of SegNeXt-T in ``bf16-mixed`` on synthetic shapes, and reports
  steps, losses, whether ``cudnn.benchmark`` was on while training, the NMF's dtype under autocast
  and the checkpoint's dtypes;
- the paper's random NMF bases on the GPU: two training forwards differ, eval is repeatable;
- SyncBatchNorm in a one-process NCCL (else gloo) group: SegNeXt-T converted with
  ``nn.SyncBatchNorm.convert_sync_batchnorm``, its layers driven through the synchronising
  kernels and collectives (torch skips them for a single process), matches plain BatchNorm in
  forward and gradients and trains a few bf16 steps;
- training throughput at 896^2 (bare SegNeXt-T steps, bf16, batch 8) beside the loader's images/s
  per worker on this machine's CPU (``benchmarks/train_synthetic.py``'s loader timing), hence the
  number of DataLoader workers that keep this GPU fed.

Without CUDA every row says ``skipped`` and nothing is started. A failing check reports
``FAILED: <one line>`` in its row and the others still run.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["train_checks"]

_CHECKS = (
    "train: Lightning bf16-mixed, SegNeXt-T",
    "train: random NMF bases on the GPU",
    "train: SyncBatchNorm (1-process group)",
    "train: images/s at 896^2 (bf16, batch 8)",
)


def train_checks(device: str = "cuda") -> list[tuple[str, str]]:
    """Run the GPU training checks on ``device``; ``[(check, result), ...]`` rows, ``skipped`` without CUDA."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        why = "CUDA is not available" if dev.type == "cuda" else f"device {device} is not a CUDA device"
        return [(name, f"skipped: {why}") for name in _CHECKS]
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(dev)
    runs: list[Callable[[torch.device], str]] = [_lightning_bf16, _nmf_bases, _sync_bn, _throughput]
    rows = []
    for name, run in zip(_CHECKS, runs, strict=True):
        try:
            rows.append((name, run(dev)))
        except Exception as e:  # one failing check must not hide the others
            first = (str(e).strip().splitlines() or [""])[0][:200]
            rows.append((name, f"FAILED: {type(e).__name__}: {first}"))
    return rows


def _lightning_bf16(dev: torch.device) -> str:
    """A few steps of the real trainer in bf16-mixed on the GPU."""
    import lightning.pytorch as pl

    from segnext_geo.train.config import load_config
    from segnext_geo.train.fit import train

    if dev.index not in (None, torch.cuda.current_device()):
        return f"skipped: Lightning trains on the current device, not {dev}"

    class Probe(pl.Callback):
        """cudnn.benchmark while training, and the NMF input/output dtypes under autocast."""

        def __init__(self) -> None:
            self.benchmark: bool | None = None
            self.nmf: list[str] = []

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.benchmark = torch.backends.cudnn.benchmark
            nmf = pl_module.model.nmf
            nmf.register_forward_hook(lambda m, i, o: self.nmf.append(f"{i[0].dtype}->{o.dtype}"))

    probe = Probe()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                "data.dataset=synthetic",
                "data.options={num_train: 32, num_val: 4, size: 128, num_classes: 4}",
                "data.batch_size=8",
                "data.num_workers=2",
                "data.img_scale=128",
                "data.crop_size=128",
                "data.test_scale=null",
                "optim.lr=0.0006",
                "schedule.iters=8",
                "schedule.warmup_iters=2",
                "trainer.val_interval=8",
                "trainer.log_interval=1",
                "trainer.accelerator=gpu",
                "trainer.devices=1",
                "trainer.precision=bf16-mixed",
                "trainer.progress_bar=false",
                "trainer.tensorboard=false",
                f"trainer.out_dir={tmp}/run",
            ],
        )
        result = train(cfg, callbacks=[probe])
        rows = list(_csv_rows(Path(tmp) / "run" / "logs" / "version_0" / "metrics.csv"))
        losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
        state = torch.load(result.last, weights_only=True, map_location="cpu")["state_dict"] if result.last else {}
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    ok = (
        result.steps == 8
        and len(losses) == 8
        and all(math.isfinite(x) for x in losses)
        and probe.benchmark is True
        and set(dtypes) <= {"float32", "int64"}
    )
    nmf = probe.nmf[0].replace("torch.", "") if probe.nmf else "not seen"
    miou = "n/a" if result.best_miou is None else f"{result.best_miou:.3f}"
    return (
        f"{'ok' if ok else 'FAILED'}: {result.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"val mIoU {miou}, cudnn.benchmark {probe.benchmark}, NMF in/out {nmf} (fp32 inside), "
        f"checkpoint {'/'.join(dtypes)}"
    )


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def _nmf_bases(dev: torch.device) -> str:
    """The paper's random bases in training (drawn per forward), the fixed ones in eval, on the GPU."""
    from segnext_geo.models import build_model

    model = build_model("tiny", 4, nmf_train_init="reference").to(dev)
    nmf = model.nmf
    x = torch.rand(2, 256, 16, 16, device=dev)
    nmf.train()
    a, b = nmf(x), nmf(x)
    torch.manual_seed(3)
    c = nmf(x)
    torch.manual_seed(3)
    d = nmf(x)
    nmf.eval()
    e, f = nmf(x), nmf(x)
    differ = not torch.allclose(a, b, atol=1e-4)
    seeded = torch.equal(c, d)
    fixed = torch.equal(e, f)
    ok = differ and seeded and fixed
    return (
        f"{'ok' if ok else 'FAILED'}: training forwards differ {differ}, same seed same bases {seeded}, "
        f"eval repeatable {fixed}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sync_bn(dev: torch.device) -> str:
    """SegNeXt-T with SyncBatchNorm through its synchronising kernels, in a one-process group.

    With one process torch's SyncBatchNorm falls back to plain batch norm, so the layers
    here call the synchronising autograd function directly (``batch_norm_stats``, an
    ``all_gather`` over the group, ``batch_norm_gather_stats_with_counts``,
    ``batch_norm_elemt`` and their backward with an ``all_reduce``), as on several GPUs.
    Forward and gradients must match plain BatchNorm (fp32); then a few bf16 steps train.
    """
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction

    from segnext_geo.models import build_model
    from segnext_geo.train.config import OptimSection, ScheduleSection
    from segnext_geo.train.recipe import build_optimizer

    class AlwaysSynced(nn.SyncBatchNorm):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if not self.training:
                return super().forward(input)
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            group = dist.group.WORLD
            return SyncBatchNormFunction.apply(
                input,
                self.weight,
                self.bias,
                self.running_mean,
                self.running_var,
                self.eps,
                self.momentum,
                group,
                dist.get_world_size(group),
            )

    started = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(backend, rank=0, world_size=1, device_id=dev if backend == "nccl" else None)
        started = True
    try:
        backend = dist.get_backend()
        options: dict[str, Any] = {"nmf_train_init": "deterministic", "dropout_ratio": 0.0, "drop_path_rate": 0.0}
        torch.manual_seed(0)
        plain = build_model("tiny", 4, **options).to(dev).train()
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("tiny", 4, **options))
        synced.load_state_dict(plain.state_dict())
        n_sync = 0
        for m in synced.modules():
            if isinstance(m, nn.SyncBatchNorm):
                m.__class__ = AlwaysSynced
                n_sync += 1
        synced = synced.to(dev).train()
        x = torch.randn(4, 3, 128, 128, device=dev)
        y = torch.randint(0, 4, (4, 128, 128), device=dev)

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

        out_s, out_p = synced(x), plain(x)
        F.cross_entropy(out_s, y).backward()
        F.cross_entropy(out_p, y).backward()
        fwd = rel(out_s, out_p)
        grads = dict(plain.named_parameters())
        grad = max(rel(p.grad, grads[n].grad) for n, p in synced.named_parameters() if p.grad is not None)
        opt, _ = build_optimizer(synced, OptimSection(lr=6e-4), ScheduleSection(iters=100, warmup_iters=1))
        losses = []
        for _ in range(4):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(synced(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    finally:
        if started:
            dist.destroy_process_group()
    ok = n_sync > 0 and fwd < 1e-3 and grad < 1e-2 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    return (
        f"{'ok' if ok else 'FAILED'}: {backend}, {n_sync} layers through the synchronising kernels; fp32 vs "
        f"BatchNorm: forward rel diff {fwd:.1e}, gradients {grad:.1e}; 4 bf16 steps loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}"
    )


def _throughput(dev: torch.device) -> str:
    """Bare bf16 training steps at 896^2, and the loader's images/s per worker on this CPU."""
    import torch.nn.functional as F

    from segnext_geo.models import build_model
    from segnext_geo.train.config import OptimSection, ScheduleSection
    from segnext_geo.train.recipe import build_optimizer

    batch, size = 8, 896
    model = build_model("tiny", 16, nmf_train_init="reference").to(dev).train()
    opt, _ = build_optimizer(model, OptimSection(), ScheduleSection())
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 16, (batch, size, size), device=dev)
    times = []
    for i in range(8):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize(dev)
        if i >= 3:  # warm-up: cudnn autotuning, allocator
            times.append(time.perf_counter() - t0)
    gpu_ips = batch / statistics.median(times)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30
    loader = _loader_images_per_s()
    if loader is None:
        return f"{gpu_ips:.1f} images/s on the GPU, peak {peak:.1f} GiB; loader not measured"
    return (
        f"{gpu_ips:.1f} images/s on the GPU (peak {peak:.1f} GiB); loader {loader:.1f} images/s per worker "
        f"on this CPU -> {math.ceil(gpu_ips / loader)} workers keep it fed"
    )


def _loader_images_per_s(samples: int = 16) -> float | None:
    """``benchmarks/train_synthetic.py``'s loader timing (iSAID recipe at 896^2 from PNG files, one thread)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        from train_synthetic import loader_speed
    except ImportError:
        return None
    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res: dict[str, Any] = loader_speed(896, samples, Path(tmp), baseline_rev=None)
    finally:
        torch.set_num_threads(threads)
    today = res["times"]["today"]
    return len(today) / sum(today)


if __name__ == "__main__":
    for name, result in train_checks(sys.argv[1] if len(sys.argv) > 1 else "cuda"):
        print(f"{name:45s} {result}")
