"""YAML training configs: typed sections, ``_base_`` inheritance and ``--set key=value`` overrides.

A config file holds the sections ``model``, ``data``, ``optim``, ``schedule``,
``trainer`` and ``eval`` (every key has a default, see the dataclasses below).
``_base_: other.yaml`` (relative to the file) is loaded first and deep-merged.
``--set data.batch_size=8`` overrides one dotted key; the value is parsed as
YAML (``--set data.crop_size=[512,512]``, ``--set model.pretrained=null``).
A key that does not exist is an error with a suggestion; so is a wrong type.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..data.section import DataSection
from ..errors import UserError

__all__ = [
    "AUTO_CHECKPOINT_INTERVAL",
    "Config",
    "DataSection",
    "EvalSection",
    "ModelSection",
    "OptimSection",
    "ScheduleSection",
    "TrainerSection",
    "load_config",
]


@dataclass
class ModelSection:
    """The network. ``drop_path_rate``/``nmf_rank`` ``None`` keep the variant's defaults.

    ``nmf_init`` is the NMF bases in training: ``reference`` (new random bases on every
    training forward, as the paper's ``rand_init``; drawn from the global torch RNG, which
    checkpoints carry, so ``--resume`` stays exact) or ``deterministic`` (one fixed set).
    Validation, ``evaluate`` and ``predict`` always use the deterministic bases.
    """

    variant: str = "segnext_t"
    drop_path_rate: float | None = None
    nmf_init: str = "reference"
    nmf_grad: str = "full"
    nmf_rank: int | None = None
    pretrained: str | None = None


@dataclass
class OptimSection:
    """AdamW; parameters whose name contains ``head`` get ``head_lr_mult``, else ``norm`` gets ``norm_decay_mult``."""

    lr: float = 6e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    norm_decay_mult: float = 0.0


@dataclass
class ScheduleSection:
    """Iteration-based schedule: linear warmup, then poly decay.

    ``style: official`` is mmseg 0.x (the SegNeXt repo): poly counted from iteration
    0 and scaled by the warmup ramp; ``mmseg1`` is mmseg 1.x: LinearLR over the
    warmup, then PolyLR from the warmup's end.
    """

    iters: int = 160000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    style: str = "official"


#: ``trainer.checkpoint_interval: auto`` on runs whose validation is rarer than this many steps.
AUTO_CHECKPOINT_INTERVAL = 2000


@dataclass
class TrainerSection:
    """Lightning settings. Intervals are in optimiser steps; validation also runs after the last step.

    ``last.ckpt`` is written after every validation and, with ``checkpoint_interval``
    N, also every N steps (``auto``: every 2000 steps when validation is rarer than
    that, so a crash loses at most ~2000 steps; ``null``: at validation only).
    ``best.ckpt`` holds the highest val mIoU. On CUDA, cuDNN's autotuner
    (``cudnn.benchmark``) is on unless ``deterministic``.
    """

    out_dir: str = "runs/segnext"
    val_interval: int = 8000
    log_interval: int = 50
    checkpoint_interval: int | str | None = "auto"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    sync_bn: bool | str = "auto"
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool | str = "auto"
    progress_bar: bool = True


@dataclass
class EvalSection:
    """Validation/evaluation inference: ``whole`` image, or ``slide`` windows of ``crop_size`` every ``stride`` px."""

    mode: str = "whole"
    crop_size: list[int] = field(default_factory=lambda: [896, 896])
    stride: list[int] = field(default_factory=lambda: [512, 512])


@dataclass
class Config:
    """A whole training/evaluation config. ``source`` is the file it came from (not a key)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    eval: EvalSection = field(default_factory=EvalSection)
    source: str = field(default="<defaults>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every key (no ``source``), for YAML/JSON and checkpoints."""
        d = asdict(self)
        d.pop("source")
        return d

    def checkpoint_every(self) -> int | None:
        """Steps between periodic ``last.ckpt`` writes (``trainer.checkpoint_interval`` resolved), or ``None``."""
        ci = self.trainer.checkpoint_interval
        if ci == "auto":
            long_run = min(self.trainer.val_interval, self.schedule.iters) > AUTO_CHECKPOINT_INTERVAL
            return AUTO_CHECKPOINT_INTERVAL if long_run else None
        return ci if isinstance(ci, int) else None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = ("model", "data", "optim", "schedule", "trainer", "eval")
#: ``[a, b]`` keys that also accept one number meaning ``[n, n]``.
_PAIRS = {
    "data.img_scale",
    "data.crop_size",
    "data.test_scale",
    "eval.crop_size",
    "eval.stride",
}
_CHOICES = {
    "model.nmf_init": ("reference", "deterministic"),
    "model.nmf_grad": ("full", "one_step"),
    "schedule.style": ("official", "mmseg1"),
    "eval.mode": ("whole", "slide"),
}


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: config file is empty (0 bytes)")
    if path.resolve() in chain:
        raise UserError(f"{path}: _base_ includes itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config must be a mapping of sections, not {type(raw).__name__}")
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, _read_yaml((path.parent / str(b)).resolve(), (*chain, path.resolve())))
    return _merge(merged, raw)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options" else v
    return out


def _all_keys() -> list[str]:
    keys = []
    for name in SECTIONS:
        cls = typing.get_type_hints(Config)[name]
        keys += [f"{name}.{f.name}" for f in fields(cls)]
    return keys


def _unknown(key: str, origin: str) -> UserError:
    keys = _all_keys() + list(SECTIONS)
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not match:  # also try the last part alone (``lr`` -> ``optim.lr``)
        tail = {k.rsplit(".", 1)[-1]: k for k in keys if "." in k}
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tail), n=1, cutoff=0.75)
        match = [tail[close[0]]] if close else []
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return UserError(f"{origin}: unknown config key {key!r}{hint}")


def _check_type(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Return ``value`` converted to ``tp`` (int->float, n->[n, n] for pairs) or raise a one-line error."""
    if key in _PAIRS and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, str) and _matches(1.5, tp) and not _matches("x", tp):
        try:  # PyYAML reads 6e-5 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if _matches(value, tp):
        if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp)):
            if isinstance(value, int) and not isinstance(value, bool):
                return float(value)
        if key in _PAIRS and value is not None and len(value) != 2:
            raise UserError(f"{origin}: {key} must be two numbers [a, b], got {value!r}")
        return value
    raise UserError(f"{origin}: {key} must be {_describe(tp)}, got {value!r}")


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"--set {item}: expected key=value, e.g. --set data.batch_size=8")
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is ``None``) and apply ``--set`` overrides.

    Raises:
        UserError: missing/unparsable file, unknown key (with a suggestion), wrong
            type or value; the message names the file or the ``--set`` item.
    """
    origin = str(path) if path is not None else "<defaults>"
    raw = _read_yaml(Path(path)) if path is not None else {}
    values: dict[str, tuple[Any, str]] = {}
    for section, body in raw.items():
        if section not in SECTIONS:
            raise _unknown(str(section), origin)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UserError(f"{origin}: section {section!r} must be a mapping of keys")
        for k, v in body.items():
            values[f"{section}.{k}"] = (v, origin)
    for item in overrides or []:
        key, value = _parse_override(item)
        values[key] = (value, f"--set {item}")

    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    known = {}
    for name in SECTIONS:
        cls = hints[name]
        known[name] = (cls, typing.get_type_hints(cls))
    for key, (value, where) in values.items():
        section, _, name = key.partition(".")
        if section not in known or name not in known[section][1]:
            raise _unknown(key, where)
        sections.setdefault(section, {})[name] = _check_type(value, known[section][1][name], key, where)
        if key in _CHOICES and sections[section][name] not in _CHOICES[key]:
            raise UserError(f"{where}: {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    cfg = Config(**{name: known[name][0](**sections.get(name, {})) for name in SECTIONS}, source=origin)
    try:
        _validate(cfg)
    except _Invalid as e:
        key, message = e.args
        where = values.get(key, (None, origin))[1]
        raise UserError(f"{where}: {key}: {message}") from None
    return cfg


class _Invalid(Exception):
    """(key, message) of a failed range check; :func:`load_config` names the file or ``--set`` item."""


def _validate(cfg: Config) -> None:
    """Checks across keys and value ranges."""
    from ..models import canonical_variant

    try:
        cfg.model.variant = canonical_variant(cfg.model.variant)
    except ValueError as e:
        raise _Invalid("model.variant", str(e)) from None
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "data.val_batch_size": cfg.data.val_batch_size,
        "schedule.iters": cfg.schedule.iters,
        "trainer.val_interval": cfg.trainer.val_interval,
        "trainer.log_interval": cfg.trainer.log_interval,
        "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        "trainer.num_nodes": cfg.trainer.num_nodes,
        "data.samples_per_epoch": cfg.data.samples_per_epoch,
    }
    for key, v in positive.items():
        if v < 1:
            raise _Invalid(key, f"must be >= 1, got {v}")
    if cfg.data.test_size_divisor is not None and cfg.data.test_size_divisor < 1:
        raise _Invalid("data.test_size_divisor", f"must be >= 1 or null, got {cfg.data.test_size_divisor}")
    if cfg.data.num_workers < 0:
        raise _Invalid("data.num_workers", f"must be >= 0, got {cfg.data.num_workers}")
    if cfg.optim.lr <= 0:
        raise _Invalid("optim.lr", f"must be > 0, got {cfg.optim.lr}")
    if len(cfg.optim.betas) != 2:
        raise _Invalid("optim.betas", f"must be two numbers, got {cfg.optim.betas}")
    if cfg.data.ratio_range is not None and (
        len(cfg.data.ratio_range) != 2 or not 0 < cfg.data.ratio_range[0] <= cfg.data.ratio_range[1]
    ):
        raise _Invalid("data.ratio_range", "must be [low, high] with 0 < low <= high")
    for key in ("data.crop_size", "data.img_scale", "eval.crop_size", "eval.stride"):
        section, name = key.split(".")
        if min(getattr(getattr(cfg, section), name)) < 1:
            raise _Invalid(key, "must be positive")
    if cfg.data.bands is not None and (not cfg.data.bands or min(cfg.data.bands) < 1):
        raise _Invalid("data.bands", f"are 1-based band numbers, got {cfg.data.bands}")
    for key in ("mean", "std"):
        v = getattr(cfg.data, key)
        n_bands = len(cfg.data.bands) if cfg.data.bands else 3
        if v is not None and len(v) != n_bands:
            raise _Invalid(f"data.{key}", f"needs one value per band ({n_bands}), got {v}")
    if cfg.data.std is not None and min(cfg.data.std) <= 0:
        raise _Invalid("data.std", "values must be > 0")
    if isinstance(cfg.trainer.devices, str) and cfg.trainer.devices != "auto":
        raise _Invalid("trainer.devices", f"must be a number or 'auto', got {cfg.trainer.devices!r}")
    ci = cfg.trainer.checkpoint_interval
    if isinstance(ci, str) and ci != "auto":
        raise _Invalid("trainer.checkpoint_interval", f"must be a number of steps, auto or null, got {ci!r}")
    if isinstance(ci, int) and ci < 1:
        raise _Invalid("trainer.checkpoint_interval", f"must be >= 1, got {ci}")
    for key in ("sync_bn", "tensorboard"):
        v = getattr(cfg.trainer, key)
        if isinstance(v, str) and v != "auto":
            raise _Invalid(f"trainer.{key}", f"must be true, false or auto, got {v!r}")
