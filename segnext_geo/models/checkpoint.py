"""Loading and saving SegNeXt checkpoints of every family.

Families (see ``../shared/docs/segnext-reference.md`` section 3):

- ``official``: the SegNeXt repo (mmseg 0.24): ``backbone.``/``decode_head.`` prefixes,
  ``mlp.dwconv.dwconv.*``, weights under ``state_dict``. NMF rank 64 for B/L.
- ``mmseg``: mmsegmentation 1.x: as above but ``mlp.dwconv.*``. NMF rank 16 for all.
- ``mscan-imagenet``: ImageNet MSCAN backbones (no prefix, extra ``head.*``
  classifier): backbone loaded, decoder freshly initialised.
- ``segnext-geo``: this project's own files (also Lightning checkpoints written by
  its trainer), carrying :class:`~segnext_geo.models.meta.ModelMeta`.

Like timm's ``checkpoint_filter_fn``, :func:`filter_state_dict` maps a foreign
state dict onto this implementation's names; loading is strict and every
mismatch is reported by name in one :class:`CheckpointError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .mscan import MSCAN_CONFIGS
from .segnext import HEAD_CONFIGS, SegNeXt, build_model, canonical_variant

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "describe_checkpoint",
    "detect_family",
    "filter_state_dict",
    "infer_variant",
    "inspect_checkpoint",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]

META_KEY = "segnext_geo"
_DEPTHS: dict[tuple[int, ...], str] = {tuple(cfg.depths): name for name, cfg in MSCAN_CONFIGS.items()}


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


class _Stub:
    """Stands in for any non-tensor Python object in an untrusted pickle (never executed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "slice",
    "complex",
    "tuple",
    "list",
    "dict",
    "int",
    "float",
    "str",
    "bytes",
    "bool",
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves torch/collections/numpy array globals and replaces every other class by :class:`_Stub`."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module == "collections" and name in {"OrderedDict", "defaultdict"}:
            return super().find_class(module, name)
        if module.startswith("torch") and (
            name.startswith("_rebuild")
            or name.endswith("Storage")
            or name in {"Size", "device", "dtype"}
            or module == "torch._utils"
        ):
            return super().find_class(module, name)
        if module.startswith("numpy") and name in {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}:
            return super().find_class(module, name)
        return _Stub


class _SafePickleModule:
    Unpickler = _SafeUnpickler
    load = pickle.load
    __name__ = "segnext_geo_safe_pickle"


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # extra Python objects in the metadata: fall back to the stubbing unpickler
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SafePickleModule)


def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint file without executing code in it; clear errors for bad files."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty")
    try:
        return _torch_load(p)
    except Exception as e:  # any failure to unpickle means the file is not a usable checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({first[:160]})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Return (state_dict, container) from a raw state dict or an mmcv/Lightning/own container."""
    if _is_state_dict(obj):
        return dict(obj), {}
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                tensors = {k: v for k, v in inner.items() if isinstance(v, Tensor)}
                if tensors:
                    return tensors, dict(obj)
    raise CheckpointError(f"{path}: no tensor weights found (expected a state dict or a 'state_dict' entry)")


def _strip_wrappers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop DDP/Lightning/EMA wrapper prefixes (``module.``, ``model.``, ``net.``)."""
    for prefix in ("module.", "model.", "net.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def detect_family(sd: Mapping[str, Tensor], container: Mapping[str, Any] | None = None) -> str:
    """One of ``segnext-geo``, ``official``, ``mmseg``, ``mscan-imagenet`` or ``unknown``."""
    if container and (META_KEY in container or META_KEY in (container.get("hyper_parameters") or {})):
        return "segnext-geo"
    keys = list(sd)
    has_prefix = any(k.startswith("backbone.") for k in keys)
    bare = any(k.startswith(("patch_embed1.", "block1.")) for k in keys)
    official_dw = any(".mlp.dwconv.dwconv." in k for k in keys)
    if has_prefix:
        return "official" if official_dw else "mmseg"
    if bare:
        return "mscan-imagenet"
    return "unknown"


def infer_variant(sd: Mapping[str, Tensor], path: Path | str = "checkpoint") -> str:
    """Infer ``segnext_t|s|b|l`` from tensor shapes and block counts (``backbone.`` prefix expected)."""
    try:
        c0 = sd["backbone.patch_embed1.proj.3.weight"].shape[0]
    except KeyError:
        raise CheckpointError(f"{path}: cannot infer the variant: no backbone.patch_embed1.proj.3.weight") from None
    depths = []
    for i in range(1, 5):
        idx = {int(k.split(".")[2]) for k in sd if k.startswith(f"backbone.block{i}.")}
        depths.append(max(idx) + 1 if idx else 0)
    name = _DEPTHS.get(tuple(depths))
    if name is None or MSCAN_CONFIGS[name].embed_dims[0] != c0:
        raise CheckpointError(f"{path}: no SegNeXt variant has stem width {c0} and depths {tuple(depths)}")
    return name


def filter_state_dict(sd: Mapping[str, Tensor], family: str) -> dict[str, Tensor]:
    """Map a foreign state dict to this implementation's key names.

    Renames ``mlp.dwconv.dwconv.`` to ``mlp.dwconv.``, adds the ``backbone.``
    prefix to bare MSCAN files and drops the ImageNet classifier (``head.*``).
    """
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if family == "mscan-imagenet":
            if k.startswith("head."):
                continue
            k = "backbone." + k
        out[k.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")] = v
    return out


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _load_strict(model: SegNeXt, sd: Mapping[str, Tensor], path: Path, backbone_only: bool = False) -> None:
    """Copy ``sd`` into ``model``; raise one error listing missing, unexpected and mismatched keys."""
    own = model.state_dict()
    expected = [k for k in own if not backbone_only or k.startswith("backbone.")]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)}!={tuple(own[k].shape)}" for k in expected if k in sd and sd[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_format_keys(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{path}: does not fit {model.meta.variant} with {model.num_classes} classes; " + "; ".join(problems)
        )
    model.load_state_dict({k: sd[k] for k in expected}, strict=not backbone_only)


def _meta_from_container(container: Mapping[str, Any]) -> dict[str, Any]:
    meta = container.get(META_KEY)
    if meta is None:
        meta = (container.get("hyper_parameters") or {}).get(META_KEY)
    return dict(meta) if isinstance(meta, Mapping) else {}


def _mmseg_dataset_meta(container: Mapping[str, Any]) -> dict[str, Any]:
    """Class names and palette from mmseg 1.x ``meta.dataset_meta`` or mmcv-1.x ``meta.CLASSES``."""
    meta = container.get("meta")
    if not isinstance(meta, Mapping):
        return {}
    out: dict[str, Any] = {}
    dm = meta.get("dataset_meta")
    ds: Mapping[str, Any] = dm if isinstance(dm, Mapping) else {}
    classes = ds.get("classes") or meta.get("CLASSES")
    palette = ds.get("palette") or meta.get("PALETTE")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        out["class_names"] = list(classes)
    if isinstance(palette, (list, tuple)) and all(isinstance(c, (list, tuple)) and len(c) == 3 for c in palette):
        out["palette"] = [tuple(int(v) for v in c) for c in palette]
    return out


class LoadedCheckpoint:
    """What :func:`inspect_checkpoint` found: family, variant, classes and the mapped weights."""

    def __init__(self, path: Path, family: str, state_dict: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.path = path
        self.family = family
        self.state_dict = state_dict
        self.meta = meta


def inspect_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a file, detect its family and map its weights to this implementation's names."""
    p = Path(path)
    obj = read_checkpoint(p)
    raw, container = _extract_state_dict(obj, p)
    sd = _strip_wrappers(raw)
    family = detect_family(sd, container)
    if family == "unknown":
        raise CheckpointError(f"{p}: not a SegNeXt/MSCAN checkpoint (no backbone.* or patch_embed1.* keys)")
    meta: dict[str, Any] = (
        _meta_from_container(container) if family == "segnext-geo" else _mmseg_dataset_meta(container)
    )
    if family == "segnext-geo":
        inner = "official" if any(".mlp.dwconv.dwconv." in k for k in sd) else "mmseg"
        sd = filter_state_dict(sd, inner)
    else:
        sd = filter_state_dict(sd, family)
    return LoadedCheckpoint(p, family, sd, meta)


def load_model(
    checkpoint: str | Path | LoadedCheckpoint,
    variant: str | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> SegNeXt:
    """Build a SegNeXt from any supported checkpoint file, in eval mode.

    The variant and the number of classes are inferred from tensor shapes when
    not given. The NMF rank defaults to the family's convention (official: 64 for
    B/L; mmseg 1.x: 16; own files: as recorded) and ``nmf_rank=`` overrides it.
    Other ``options`` are passed to :func:`build_model`. ``checkpoint`` may also be what
    :func:`inspect_checkpoint` returned, so a file is read only once.

    Raises:
        CheckpointError: unreadable file, unknown layout, or keys that do not fit
            (every missing, unexpected or mismatched key is named).
    """
    ck = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else inspect_checkpoint(checkpoint)
    p, sd, meta = ck.path, ck.state_dict, ck.meta
    v = (
        canonical_variant(variant)
        if variant
        else canonical_variant(meta["variant"])
        if meta.get("variant")
        else infer_variant(sd, p)
    )
    if ck.family == "mscan-imagenet":
        if num_classes is None:
            raise CheckpointError(f"{p}: is an ImageNet MSCAN backbone without a segmentation head; give num_classes")
        k = int(num_classes)
    else:
        seg = sd.get("decode_head.conv_seg.weight")
        if seg is None:
            raise CheckpointError(f"{p}: missing keys: decode_head.conv_seg.weight (no segmentation head)")
        k_file = int(seg.shape[0])
        if num_classes is not None and int(num_classes) != k_file:
            raise CheckpointError(f"{p}: has {k_file} classes but {num_classes} were asked for")
        k = k_file
    if "nmf_rank" not in options or options["nmf_rank"] is None:
        if ck.family == "official":
            options["nmf_rank"] = HEAD_CONFIGS[v].nmf_rank_official
        elif ck.family == "segnext-geo" and meta.get("nmf_rank"):
            options["nmf_rank"] = int(meta["nmf_rank"])
        else:
            options["nmf_rank"] = HEAD_CONFIGS[v].nmf_rank_mmseg
    meta_fields = {key: meta[key] for key in ("class_names", "palette", "mean", "std", "bands", "extra") if key in meta}
    if "class_names" in meta_fields and len(meta_fields["class_names"]) != k:
        meta_fields.pop("class_names")
    if "palette" in meta_fields and len(meta_fields["palette"]) != k:
        meta_fields.pop("palette")
    if "bands" in meta_fields and "in_channels" not in options:
        options["in_channels"] = len(meta_fields["bands"])
    for key, value in meta_fields.items():
        options.setdefault(key, value)
    try:
        model = build_model(v, k, **options)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{p}: {e}") from None
    model.meta.family = ck.family
    if ck.family == "mscan-imagenet":
        _load_strict(model, sd, p, backbone_only=True)
        model.meta.extra["note"] = "backbone from ImageNet MSCAN weights; decoder freshly initialised"
    else:
        _load_strict(model, sd, p)
    return model.eval()


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Summary of a checkpoint: family, variant, classes, parameter count, NMF rank, bands."""
    ck = inspect_checkpoint(path)
    model = load_model(ck, num_classes=150 if ck.family == "mscan-imagenet" else None)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {
        "path": str(ck.path),
        "family": ck.family,
        "variant": model.meta.variant,
        "num_classes": model.num_classes if ck.family != "mscan-imagenet" else None,
        "class_names": model.meta.class_names if ck.family != "mscan-imagenet" else [],
        "parameters": sum(p.numel() for p in model.parameters()) if ck.family != "mscan-imagenet" else backbone,
        "backbone_parameters": backbone,
        "nmf_rank": model.nmf.rank,
        "bands": list(model.meta.bands),
        "mean": list(model.meta.mean),
        "std": list(model.meta.std),
        "tensors": len(ck.state_dict),
    }


def save_checkpoint(model: SegNeXt, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"state_dict", "segnext_geo": meta}`` atomically (temp file, then rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    payload: dict[str, Any] = {"state_dict": model.state_dict(), META_KEY: model.meta.to_dict()}
    if extra:
        payload.update(extra)
    try:
        torch.save(payload, tmp)
        tmp.replace(p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
