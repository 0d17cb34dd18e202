"""``train()``: build the data, the model and a Lightning Trainer from a config, and fit.

Run folder (``trainer.out_dir``): ``best.ckpt`` (highest val mIoU), ``last.ckpt``,
``config.yaml``, ``training_curve.png``, ``logs/version_N/metrics.csv`` (and
TensorBoard logs under ``tb/`` when tensorboard is installed).

Several devices or nodes run DDP (one process per device; Lightning starts the
extra local processes by re-running the same command, or takes them from
``torchrun``/SLURM), with BatchNorm converted to SyncBatchNorm on GPUs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .config import Config

if TYPE_CHECKING:
    from ..data.build import DataBundle

__all__ = ["RUN_FILES", "TrainResult", "train", "train_from_config"]

#: Files (and folders) a run writes into ``trainer.out_dir``; ``--overwrite`` removes exactly these.
RUN_FILES = ("best.ckpt", "last.ckpt", "config.yaml", "training_curve.png", "logs", "tb")


@dataclass
class TrainResult:
    """Where the run's files are and how it ended."""

    out_dir: Path
    best: Path | None
    last: Path | None
    best_miou: float | None
    steps: int


#: Lightning warnings that do not apply to this trainer (iteration-based, own run folder, own samplers).
_EXPECTED_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r"The number of training batches .* is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)",
    r"Experiment logs directory .* exists and is not empty",
    r"You're resuming from a checkpoint that ended before the epoch ended",  # the sampler skips what was used
)


class _DropTips(logging.Filter):
    """Hide Lightning's advertising tips (litlogger, litmodels) from the run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


_TIPS = _DropTips()


def _env_rank() -> int:
    """Global rank from the launcher's environment (0 in the process the user started)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def _prepare_out_dir(out_dir: Path, resume: Path | None, overwrite: bool) -> None:
    if _env_rank() != 0:
        return
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and resume is None:
        if not overwrite:
            raise UserError(
                f"trainer.out_dir={out_dir}: already holds a run ({', '.join(existing)}); "
                f"continue it with --resume {out_dir / 'last.ckpt'} or start over with --overwrite"
            )
        for name in existing:
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _remove_unfinished_run(out_dir: Path) -> None:
    """A new run that failed before its first checkpoint leaves nothing behind (a later run needs no --overwrite)."""
    if any((out_dir / name).exists() for name in ("best.ckpt", "last.ckpt")):
        return
    for name in RUN_FILES:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _check_resume(resume: Path, num_classes: int) -> None:
    from ..models.checkpoint import META_KEY, read_checkpoint

    ck = read_checkpoint(resume)
    if not isinstance(ck, dict) or "loops" not in ck or "optimizer_states" not in ck:
        raise UserError(f"{resume}: not a Lightning training checkpoint of this tool (no loop/optimizer state)")
    meta = ck.get(META_KEY) or {}
    k = meta.get("num_classes")
    if k is not None and int(k) != num_classes:
        raise UserError(f"{resume}: has {k} classes but the dataset has {num_classes}")


def _unwrap_worker_error(e: BaseException) -> UserError | None:
    """A ``UserError`` raised in a DataLoader worker comes back with the worker's traceback; keep its message."""
    text = str(e)
    m = re.search(r"segnext_geo\.errors\.UserError: (.+?)\s*$", text, flags=re.S)
    if isinstance(e, UserError) and m:
        return UserError(m.group(1))
    return e if isinstance(e, UserError) else None


def _cudnn_benchmark(deterministic: bool, gpu: bool) -> bool | None:
    """``cudnn.benchmark`` for the Trainer: on for CUDA training (as mmseg), else left alone."""
    return True if gpu and not deterministic else None


def _build_model(cfg: Config, bundle: Any) -> Any:
    from ..models import build_model

    options: dict[str, Any] = {
        "nmf_train_init": cfg.model.nmf_init,  # eval keeps the deterministic bases
        "nmf_grad": cfg.model.nmf_grad,
        "in_channels": bundle.in_channels,
        "class_names": bundle.class_names,
        "palette": bundle.palette,
        "mean": bundle.mean,
        "std": bundle.std,
        "bands": bundle.bands,
        "gsd_m": bundle.gsd_m,
        "gsd_note": bundle.gsd_note,
    }
    if cfg.model.drop_path_rate is not None:
        options["drop_path_rate"] = cfg.model.drop_path_rate
    if cfg.model.nmf_rank is not None:
        options["nmf_rank"] = cfg.model.nmf_rank
    model = build_model(cfg.model.variant, bundle.num_classes, **options)
    model.meta.extra.update(
        {
            "dataset": bundle.dataset,
            "ignore_index": cfg.data.ignore_index,
            "test_scale": cfg.data.test_scale,
            "test_size_divisor": cfg.data.test_size_divisor,
            "eval": {"mode": cfg.eval.mode, "crop_size": cfg.eval.crop_size, "stride": cfg.eval.stride},
        }
    )
    return model


def train(
    cfg: Config,
    resume: str | Path | None = None,
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
    progress: bool | None = None,
    data: DataBundle | None = None,
) -> TrainResult:
    """Train SegNeXt as ``cfg`` says; ``resume`` continues a run exactly from a ``.ckpt``.

    ``callbacks`` are extra Lightning callbacks. ``progress`` overrides
    ``trainer.progress_bar``. ``data`` replaces what ``cfg.data`` would open
    (:func:`~segnext_geo.data.build.build_data`) with sources built in code, e.g. a
    spatial hold-out of the same scenes (its ``train`` and ``val`` sources, classes,
    palette, bands and normalisation); ``cfg.data`` still gives the loader sizes and
    the augmentation.

    Raises:
        UserError: bad dataset, existing run folder (without ``resume``/``overwrite``),
            class-count mismatch with ``resume``, indivisible batch size, or a bad
            pretrained file; each names the file or option.
    """
    out_dir = Path(cfg.trainer.out_dir).expanduser()
    resume_path = Path(resume) if resume is not None else None
    if resume_path is not None and not resume_path.is_file():
        raise UserError(f"--resume {resume_path}: checkpoint not found")
    _prepare_out_dir(out_dir, resume_path, overwrite)

    import lightning.pytorch as pl
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from ..data.build import build_data
    from .callbacks import TrainingCurve, ValidateAtEnd
    from .datamodule import SegDataModule
    from .module import SegNeXtModule
    from .pretrained import init_from_pretrained, warn_if_from_scratch

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_TIPS)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    bundle = data if data is not None else build_data(cfg.data, roles=("train", "val"))
    missing = [role for role in ("train", "val") if role not in bundle.sources]
    if missing:
        raise UserError(f"data: no {' or '.join(missing)} source given")
    if resume_path is not None:
        _check_resume(resume_path, bundle.num_classes)
    model = _build_model(cfg, bundle)
    if cfg.model.pretrained and resume_path is None:
        model.meta.extra["pretrained"] = init_from_pretrained(model, cfg.model.pretrained)
    module = SegNeXtModule(model, cfg)

    t = cfg.trainer
    gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    sync_bn = t.sync_bn if isinstance(t.sync_bn, bool) else None
    if sync_bn and not gpu:
        raise UserError("trainer.sync_bn=true: SyncBatchNorm needs GPUs (use false or auto on CPU)")
    loggers: list[Any] = [CSVLogger(str(out_dir), name="logs")]
    want_tb = t.tensorboard if isinstance(t.tensorboard, bool) else None
    has_tb = any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
    if want_tb and not has_tb:
        raise UserError("trainer.tensorboard=true: install tensorboard (pip install tensorboard) or set it to auto")
    if (want_tb is None and has_tb) or want_tb:
        loggers.append(TensorBoardLogger(str(out_dir), name="tb"))
    accum = t.accumulate_grad_batches
    curve = TrainingCurve(out_dir, cfg, t.log_interval)
    # best: highest val mIoU; last: after every validation and every trainer.checkpoint_interval steps
    best_cb = ModelCheckpoint(
        dirpath=str(out_dir),
        filename="best",
        monitor="val/mIoU",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    every = cfg.checkpoint_every()
    last_cbs = [
        ModelCheckpoint(
            dirpath=str(out_dir),
            filename="last",
            save_top_k=1,
            every_n_train_steps=n,  # None: after every validation
            enable_version_counter=False,
        )
        for n in ([None, every] if every else [None])
    ]
    cbs: list[Any] = [best_cb, *last_cbs, curve, ValidateAtEnd(), *(callbacks or [])]
    show_progress = t.progress_bar if progress is None else progress
    if show_progress:
        cbs.append(TQDMProgressBar(refresh_rate=max(1, min(t.log_interval, 20))))
    try:
        trainer = pl.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy="auto",
            precision=t.precision,  # type: ignore[arg-type]
            max_steps=cfg.schedule.iters,
            max_epochs=-1,
            val_check_interval=cfg.trainer.val_interval * accum,
            check_val_every_n_epoch=None,
            log_every_n_steps=t.log_interval,
            accumulate_grad_batches=accum,
            # applied by Lightning only when distributed; "auto" = on with GPUs (torch has no CPU SyncBatchNorm)
            sync_batchnorm=sync_bn if sync_bn is not None else gpu,
            deterministic=t.deterministic,
            benchmark=_cudnn_benchmark(t.deterministic, gpu),
            use_distributed_sampler=False,
            num_sanity_val_steps=1,
            logger=loggers,
            callbacks=cbs,
            enable_progress_bar=show_progress,
            enable_model_summary=False,
            default_root_dir=str(out_dir),
        )
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise UserError(f"trainer ({cfg.source}): {str(e).splitlines()[0]}") from None
    world = trainer.world_size
    share = world * accum
    if cfg.data.batch_size % share:
        raise UserError(
            f"data.batch_size={cfg.data.batch_size}: must divide evenly over {world} device(s) x "
            f"{accum} accumulation step(s)"
        )
    datamodule = SegDataModule(cfg, bundle, cfg.data.batch_size // share)
    if resume_path is None and trainer.is_global_zero:
        warn_if_from_scratch(cfg)  # once every check passed, right before training starts
    try:
        with warnings.catch_warnings():
            for pattern in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_path) if resume_path else None)
    except BaseException as e:
        if resume_path is None and trainer.is_global_zero:
            _remove_unfinished_run(out_dir)
        user = _unwrap_worker_error(e) if isinstance(e, Exception) else None
        if user is not None:
            raise user from None
        raise
    best = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    last = out_dir / "last.ckpt"
    score = best_cb.best_model_score
    return TrainResult(
        out_dir=out_dir,
        best=best,
        last=last if last.exists() else None,
        best_miou=float(score) if score is not None else None,
        steps=trainer.global_step,
    )


def train_from_config(
    config: str | Path | None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    pretrained: str | Path | None = None,
    devices: int | str | None = None,
    num_nodes: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Load ``config`` with ``--set`` ``overrides``, apply the command-line options, and :func:`train`."""
    from .config import load_config

    sets = list(overrides or [])
    if pretrained is not None:
        sets.append(f"model.pretrained={pretrained}")
    if devices is not None:
        sets.append(f"trainer.devices={devices}")
    if num_nodes is not None:
        sets.append(f"trainer.num_nodes={num_nodes}")
    cfg = load_config(config, sets)
    if cfg.model.pretrained:
        from .pretrained import fetch_pretrained

        fetch_pretrained(cfg.model.pretrained)  # a file, or a name/URL downloaded now, before the run starts
    return train(cfg, resume=resume, overwrite=overwrite, progress=progress)
