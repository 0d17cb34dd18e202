"""Loading and saving SegNeXt checkpoints of every family.

Families (see ``../shared/docs/segnext-reference.md`` section 3):

- ``official``: the SegNeXt repo (mmseg 0.24): ``backbone.``/``decode_head.`` prefixes,
  ``mlp.dwconv.dwconv.*``, weights under ``state_dict``. NMF rank 64 for B/L.
- ``mmseg``: mmsegmentation 1.x: as above but ``mlp.dwconv.*``. NMF rank 16 for all.
- ``mscan-imagenet``: ImageNet MSCAN backbones (no prefix, extra ``head.*``
  classifier): backbone loaded, decoder freshly initialised.
- ``segnext-geo``: this project's own files (also Lightning checkpoints written by
  its trainer), carrying :class:`~segnext_geo.models.meta.ModelMeta`.

Two file formats: PyTorch (``torch.save``, zip or legacy) and Jittor pickles (JSeg, the
authors' Jittor port; official key names, read by :mod:`segnext_geo.models.jittor`). Neither
is ever unpickled with code execution. A checkpoint may also be named by catalogue name or
URL (:mod:`segnext_geo.models.weights`, :mod:`segnext_geo.models.hub`).

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

from .errors import CheckpointError
from .jittor import JITTOR_MARKER, fill_num_batches_tracked, jittor_state_dict, read_jittor
from .mscan import MSCAN_CONFIGS
from .safe_pickle import MetadataPickleModule
from .segnext import HEAD_BIAS_KEYS, HEAD_CONFIGS, SegNeXt, build_model, canonical_variant
from .weights import Weights

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "describe_checkpoint",
    "detect_family",
    "file_format",
    "filter_state_dict",
    "infer_variant",
    "inspect_checkpoint",
    "inspect_file",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]

META_KEY = "segnext_geo"
#: The ModelMeta fields a checkpoint's metadata (or its catalogue entry) passes to the model.
_META_FIELDS = ("class_names", "palette", "mean", "std", "bands", "extra", "gsd_m", "gsd_note")
_DEPTHS: dict[tuple[int, ...], str] = {tuple(cfg.depths): name for name, cfg in MSCAN_CONFIGS.items()}


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Leading bytes of files that are often passed by mistake, and what they are.
_NOT_CHECKPOINTS: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "a TIFF image (a raster?)"),
    (b"MM\x00*", "a TIFF image (a raster?)"),
    (b"II+\x00", "a BigTIFF image (a raster?)"),
    (b"MM\x00+", "a BigTIFF image (a raster?)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"GIF8", "a GIF image"),
    (b"SQLite format 3\x00", "an SQLite database (a GeoPackage?)"),
    (b"\x89HDF", "an HDF5 file (a Keras model?)"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"<!DOCTYPE", "an HTML page (an error or login page saved instead of the file?)"),
    (b"<html", "an HTML page (an error or login page saved instead of the file?)"),
    (b"<HTML", "an HTML page (an error or login page saved instead of the file?)"),
    (b"<?xml", "an XML file (a VRT?)"),
    (b"<VRTDataset", "a GDAL VRT"),
    (b"{", "a JSON file"),
)


def _is_legacy_torch(head: bytes) -> bool:
    """A non-zip ``torch.save`` file: a pickle whose first object is PyTorch's magic number."""
    if head[:1] != b"\x80":
        return False
    i = 2
    if head[i : i + 1] == b"\x95":  # FRAME (protocol >= 4)
        i += 9
    return head[i : i + 2] == b"\x8a\x0a" and int.from_bytes(head[i + 2 : i + 12], "little") == _TORCH_LEGACY_MAGIC


def file_format(path: str | Path) -> str:
    """``"pytorch"`` (zip or legacy ``torch.save``) or ``"jittor"`` (a pickle, with or without SHA-1 trailer).

    Raises:
        CheckpointError: missing, a directory, empty, or a recognisably different kind of file
            (a TIFF, PNG, GeoPackage, HTML page ...), named in the message.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty (0 bytes)")
    with open(p, "rb") as f:
        head = f.read(64)
        f.seek(max(0, size - len(JITTOR_MARKER)))
        tail = f.read()
    if head.startswith(b"PK\x03\x04"):
        return "pytorch"
    if _is_legacy_torch(head):
        return "pytorch"
    if tail == JITTOR_MARKER or head[:1] == b"\x80":
        return "jittor"
    for magic, what in _NOT_CHECKPOINTS:
        if head.lstrip().startswith(magic):
            raise CheckpointError(f"{p}: is {what}, not a model checkpoint")
    if _is_text(head):
        raise CheckpointError(f"{p}: is a text file, not a model checkpoint (it starts {head[:24].decode()!r})")
    return "pytorch"  # torch.load says what is wrong


def _is_text(head: bytes) -> bool:
    """Printable ASCII (with tabs and line breaks) only: a config, a list, a JSON file; never a pickle or a zip."""
    return bool(head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # extra Python objects in the metadata: fall back to the stubbing unpickler
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=MetadataPickleModule)


def read_checkpoint(path: str | Path) -> Any:
    """Read a PyTorch or Jittor checkpoint file without executing code in it; clear errors for bad files.

    PyTorch files are read with ``weights_only=True`` (metadata holding other objects: with
    :class:`~segnext_geo.models.safe_pickle.MetadataUnpickler`); Jittor pickles with
    :func:`~segnext_geo.models.jittor.read_jittor` (numpy arrays only, SHA-1 trailer verified).
    """
    p = Path(path)
    if file_format(p) == "jittor":
        return read_jittor(p)
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
    """One of ``segnext-geo``, ``official``, ``mmseg``, ``mscan-imagenet`` or ``unknown``.

    ``mscan-imagenet`` is a backbone without a decoder: bare MSCAN keys (``patch_embed1.*``,
    often with an ImageNet ``head.*``), or ``backbone.*`` keys without any ``decode_head.*``.
    """
    if container and (META_KEY in container or META_KEY in (container.get("hyper_parameters") or {})):
        return "segnext-geo"
    keys = list(sd)
    has_prefix = any(k.startswith("backbone.") for k in keys)
    has_head = any(k.startswith("decode_head.") for k in keys)
    bare = any(k.startswith(("patch_embed1.", "block1.")) for k in keys)
    official_dw = any(".mlp.dwconv.dwconv." in k for k in keys)
    if has_prefix and has_head:
        return "official" if official_dw else "mmseg"
    if bare or has_prefix:
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
            if not k.startswith("backbone."):
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
    """What :func:`inspect_checkpoint` found: file, format, family, the mapped weights and metadata.

    ``weights`` is the catalogue entry the file belongs to (by name, URL or cache file name), if any.
    """

    def __init__(
        self,
        path: Path,
        family: str,
        state_dict: dict[str, Tensor],
        meta: dict[str, Any],
        format: str = "pytorch",
        weights: Weights | None = None,
    ) -> None:
        self.path = path
        self.family = family
        self.state_dict = state_dict
        self.meta = meta
        self.format = format
        self.weights = weights

    @property
    def head_conv_bias(self) -> bool:
        """The file has biases on the three GroupNorm'd head convs (JSeg code of Sept 2022)."""
        return all(k in self.state_dict for k in HEAD_BIAS_KEYS)


def inspect_file(path: str | Path, weights: Weights | None = None) -> LoadedCheckpoint:
    """Read one local file (PyTorch or Jittor), detect its family and map its weights to this implementation's names.

    ``weights``: the catalogue entry the file is meant to be; its classes, palette, NMF rank and
    normalisation go into ``meta`` (files of the same family only).
    """
    p = Path(path)
    fmt = file_format(p)
    obj = read_checkpoint(p)
    raw, container = jittor_state_dict(obj, p) if fmt == "jittor" else _extract_state_dict(obj, p)
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
    if fmt == "jittor":
        fill_num_batches_tracked(sd)  # Jittor's BatchNorm has none; unused in eval
    if weights is not None and family == weights.family:
        meta.update(weights.model_meta())
    elif weights is not None:
        weights = None  # same file name, different content: not the catalogue's file
    return LoadedCheckpoint(p, family, sd, meta, fmt, weights)


def inspect_checkpoint(checkpoint: str | Path, progress: bool | None = None) -> LoadedCheckpoint:
    """Resolve ``checkpoint`` (a file, a catalogue name such as ``segnext_t_isaid``, or a URL) and inspect it.

    Names and URLs are downloaded into the cache on first use (see :mod:`segnext_geo.models.hub`);
    ``progress`` shows a download bar (``None``: only on a terminal).
    """
    from .hub import resolve_checkpoint

    path, weights = resolve_checkpoint(checkpoint, progress=progress)
    return inspect_file(path, weights)


def load_model(
    checkpoint: str | Path | LoadedCheckpoint,
    variant: str | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> SegNeXt:
    """Build a SegNeXt from a checkpoint file, a catalogue name or a URL, in eval mode.

    ``checkpoint`` is a path (PyTorch or Jittor file of any supported family), a name from
    :func:`~segnext_geo.models.weights.list_weights` (``"segnext_t_isaid"``: downloaded and cached
    on first use, with the catalogue's classes, palette and normalisation), an ``http(s)://`` or
    ``file://`` URL, or what :func:`inspect_checkpoint` returned (so a file is read only once).

    The variant and the number of classes are inferred from tensor shapes when not given. The NMF
    rank defaults to what the catalogue or the file records, else the family's convention (official:
    64 for B/L; mmseg 1.x: 16) and ``nmf_rank=`` overrides it. Files with biases on the three
    GroupNorm'd head convs (JSeg, Sept 2022) get ``head_conv_bias=True``. Other ``options`` are
    passed to :func:`build_model`.

    Raises:
        CheckpointError: unreadable file, unknown layout, or keys that do not fit
            (every missing, unexpected or mismatched key is named).
        UserError: a name or URL that cannot be downloaded (one line naming the model, the URL,
            the cache path and the ``segnext-geo models import`` command).
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
        if meta.get("nmf_rank"):
            options["nmf_rank"] = int(meta["nmf_rank"])
        elif ck.family == "official":
            options["nmf_rank"] = HEAD_CONFIGS[v].nmf_rank_official
        else:
            options["nmf_rank"] = HEAD_CONFIGS[v].nmf_rank_mmseg
    if ck.head_conv_bias and ck.family != "mscan-imagenet":
        options.setdefault("head_conv_bias", True)
    meta_fields = {key: meta[key] for key in _META_FIELDS if key in meta}
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


def describe_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """Summary of a checkpoint (file, catalogue name or URL): family, variant, classes, parameters, NMF rank, bands.

    For catalogue weights also ``weights`` (the entry as a dict).
    """
    ck = inspect_checkpoint(checkpoint)
    backbone_only = ck.family == "mscan-imagenet"
    model = load_model(ck, num_classes=150 if backbone_only else None)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {
        "path": str(ck.path),
        "format": ck.format,
        "family": ck.family,
        "variant": model.meta.variant,
        "num_classes": None if backbone_only else model.num_classes,
        "class_names": [] if backbone_only else model.meta.class_names,
        "parameters": backbone if backbone_only else sum(p.numel() for p in model.parameters()),
        "backbone_parameters": backbone,
        "nmf_rank": model.nmf.rank,
        "head_conv_bias": ck.head_conv_bias,
        "bands": list(model.meta.bands),
        "mean": list(model.meta.mean),
        "std": list(model.meta.std),
        "gsd_m": model.meta.gsd_m,
        "gsd_note": model.meta.gsd_note,
        "tensors": len(ck.state_dict),
        "weights": ck.weights.to_dict() if ck.weights is not None else None,
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
