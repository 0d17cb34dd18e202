"""The catalogue of published SegNeXt weights: one :class:`Weights` entry per file.

Like torchgeo's ``WeightsEnum`` or timm's ``pretrained_cfg``: each entry says where the file is,
how to read it and what the checkpoint itself does not say (classes, palette, NMF rank,
normalisation, training crop, licence). Facts and sources: ``../shared/docs/pretrained-weights.md``.

- ``segnext_{t,s,b,l}_isaid``: the authors' Jittor port (JSeg), iSAID, 16 classes.
- ``segnext_{t,s,b,l}_ade20k``: mmsegmentation 1.x, ADE20K, 150 classes (NMF rank 16 for all).
- ``segnext_{t,s,b,l}_ade20k_official`` / ``_cityscapes``: the SegNeXt authors' PyTorch release
  (Tsinghua cloud), ADE20K 150 / Cityscapes 19 classes.
- ``segnext_{t,s,b,l}_ade20k_jittor`` / ``_cityscapes_jittor``: JSeg's ADE20K / Cityscapes files.
- ``mscan_{t,s,b,l}`` (mmseg) and ``mscan_{t,s,b,l}_jittor``: ImageNet-1k backbones for ``train --pretrained``.

Downloading, caching and verifying are in :mod:`segnext_geo.models.hub`; this module only holds data.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from .classes import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .meta import IMAGENET_MEAN, IMAGENET_STD, ISAID_CLASSES, ISAID_PALETTE

__all__ = [
    "Weights",
    "estimated_size",
    "find_weights",
    "get_weights",
    "list_weights",
    "register_weights",
    "suggest_weights",
    "unregister_weights",
    "weights_for_filename",
    "weights_for_url",
]

_RESEARCH_ONLY = (
    "No licence is published with the file. Weights learned from {data} inherit its terms: "
    "{terms}. Check them before any commercial use."
)
LICENCES = {
    "iSAID": _RESEARCH_ONLY.format(
        data="iSAID (DOTA images from Google Earth and Chinese satellites)",
        terms="academic, non-commercial research use only",
    ),
    "ADE20K": _RESEARCH_ONLY.format(
        data="ADE20K (and the ImageNet-1k backbone)", terms="non-commercial research and educational use"
    ),
    "Cityscapes": _RESEARCH_ONLY.format(
        data="Cityscapes (and the ImageNet-1k backbone)", terms="non-commercial research use"
    ),
    "ImageNet-1k": _RESEARCH_ONLY.format(data="ImageNet-1k", terms="non-commercial research and educational use"),
}
_CODE_LICENCE = {
    "jittor": " Code: JSeg (github.com/Jittor/JSeg).",
    "mmseg": " Code: mmsegmentation, Apache-2.0.",
    "official": " Code: SegNeXt, Apache-2.0 ('for commercial use, please contact the authors').",
}

_JITTOR = "https://cg.cs.tsinghua.edu.cn/jittor/assets/build/checkpoints/"
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/"
_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
_SIZES = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
_RANK_OFFICIAL = {"t": 16, "s": 16, "b": 64, "l": 64}


@dataclass(frozen=True)
class Weights:
    """One published weights file and everything needed to use it.

    Attributes:
        name: the catalogue name (``segnext_t_isaid``); what ``--checkpoint`` accepts.
        url: where the file is published.
        filename: the file's name in the cache (the published name; for Tsinghua cloud links,
            which carry none, the name of the config it was trained with).
        format: ``"jittor"`` (pickle of numpy arrays + SHA-1 trailer) or ``"pytorch"``.
        family: key naming after reading: ``official``, ``mmseg`` or ``mscan-imagenet``.
        variant: ``segnext_t|s|b|l``.
        dataset: the training dataset.
        num_classes: K (``None`` for ImageNet backbones, which have no segmentation head).
        class_names, palette: K names and K RGB colours (class 0 first).
        nmf_rank: the NMF rank R the model was trained with (``None`` for backbones).
        bands: 1-based raster bands in model order; ``band_names`` their meaning.
        mean, std: per-band normalisation on 0-255 values.
        crop_size: the training crop ``(h, w)`` in pixels.
        miou: reported single-scale mIoU in % (``None`` if none was published).
        reported: where the score comes from, in words.
        licence: the terms of the weights, in words.
        gsd_m: ground sample distance of the training imagery in metres (``None``: not one value).
        gsd_note: the GSD in words (``"varies"``, ``"ground-level photos"``).
        sha256_prefix: leading hex digits of the file's SHA-256, where published (mmseg names).
        sha1_trailer: the file carries Jittor's SHA-1 trailer (checked when present).
        size_bytes: the file size, where known.
        publisher: who published the file.
        imagery: what imagery the model suits, in words.
    """

    name: str
    url: str
    filename: str
    format: str
    family: str
    variant: str
    dataset: str
    num_classes: int | None
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    nmf_rank: int | None
    crop_size: tuple[int, int]
    miou: float | None
    reported: str
    licence: str
    publisher: str
    imagery: str
    bands: tuple[int, ...] = (1, 2, 3)
    band_names: tuple[str, ...] = ("red", "green", "blue")
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    gsd_m: float | None = None
    gsd_note: str = ""
    sha256_prefix: str | None = None
    sha1_trailer: bool = False
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def backbone_only(self) -> bool:
        """An ImageNet backbone (for ``train --pretrained``), not a segmentation model."""
        return self.family == "mscan-imagenet"

    def model_meta(self) -> dict[str, Any]:
        """What the entry adds to a loaded model's :class:`~segnext_geo.models.meta.ModelMeta`."""
        out: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std), "bands": list(self.bands)}
        if self.num_classes:
            out["class_names"] = list(self.class_names)
            out["palette"] = [list(c) for c in self.palette]
        if self.nmf_rank:
            out["nmf_rank"] = self.nmf_rank
        out["gsd_m"], out["gsd_note"] = self.gsd_m, self.gsd_note
        out["extra"] = {
            "weights": self.name,
            "dataset": self.dataset,
            "url": self.url,
            "licence": self.licence,
            "crop_size": list(self.crop_size),
            "gsd_m": self.gsd_m,
            "gsd_note": self.gsd_note,
            "miou": self.miou,
        }
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        d = asdict(self)
        d["palette"] = [list(c) for c in self.palette]
        d["class_names"] = list(self.class_names)
        return d


_ISAID_GSD = "varies: Google Earth and Chinese satellite scenes (DOTA) at different resolutions"
_ISAID_IMAGERY = (
    "overhead RGB (aerial or satellite, 8-bit): ships, vehicles, planes, storage tanks, sports fields, "
    "bridges, harbours, roundabouts, swimming pools; everything else is background"
)
_ADE_IMAGERY = "ground-level photos of 150 scene and object classes; not trained on overhead imagery"
_CITY_IMAGERY = "street-level driving scenes (German cities); not trained on overhead imagery"
_MSCAN_IMAGERY = "ImageNet-1k backbone only: start of a training run (train --pretrained)"


def _entries() -> list[Weights]:
    out: list[Weights] = []
    isaid_miou = {"t": 68.3, "s": 68.8, "b": 69.9, "l": 70.3}
    for v, size in _SIZES.items():
        filename = f"segnext_{size}_896x896_isaid_160k.pkl"
        out.append(
            Weights(
                name=f"segnext_{v}_isaid",
                url=_JITTOR + filename,
                filename=filename,
                format="jittor",
                family="official",
                variant=f"segnext_{v}",
                dataset="iSAID",
                num_classes=16,
                class_names=ISAID_CLASSES,
                palette=ISAID_PALETTE,
                nmf_rank=_RANK_OFFICIAL[v],
                crop_size=(896, 896),
                miou=isaid_miou[v],
                reported="single scale, iSAID val; SegNeXt paper Table 4 and JSeg README",
                licence=LICENCES["iSAID"] + _CODE_LICENCE["jittor"],
                publisher="the SegNeXt authors' Jittor port (JSeg)",
                imagery=_ISAID_IMAGERY,
                gsd_note=_ISAID_GSD,
                sha1_trailer=True,
            )
        )
    ade_mmseg = {
        "t": ("20230210_140244-05bd8466", 41.50),
        "s": ("20230214_113014-43013668", 44.16),
        "b": ("20230209_172053-b6f6c70c", 48.03),
        "l": ("20230209_172055-19b14b63", 50.99),
    }
    for v, (stamp, miou) in ade_mmseg.items():
        stem = f"segnext_mscan-{v}_1x16_512x512_adamw_160k_ade20k"
        filename = f"{stem}_{stamp}.pth"
        out.append(
            Weights(
                name=f"segnext_{v}_ade20k",
                url=f"{_MMSEG}segnext/{stem}/{filename}",
                filename=filename,
                format="pytorch",
                family="mmseg",
                variant=f"segnext_{v}",
                dataset="ADE20K",
                num_classes=150,
                class_names=ADE20K_CLASSES,
                palette=ADE20K_PALETTE,
                nmf_rank=16,
                crop_size=(512, 512),
                miou=miou,
                reported="single scale, ADE20K val; mmsegmentation 1.x README",
                licence=LICENCES["ADE20K"] + _CODE_LICENCE["mmseg"],
                publisher="mmsegmentation 1.x (OpenMMLab)",
                imagery=_ADE_IMAGERY,
                gsd_note="ground-level photos (no GSD)",
                sha256_prefix=stamp.rsplit("-", 1)[1],
            )
        )
    ade_official = {
        "t": ("5da98841b8384ba0988a", 41.1),
        "s": ("b2d1eb94f5944d60b3d2", 44.3),
        "b": ("1ea8000916284493810b", 48.5),
        "l": ("d4f8e1020643414fbf7f", 51.0),
    }
    city_official = {
        "t": ("b1613af9955849bba910", 79.8),
        "s": ("14148cf5371a4f248db1", 81.3),
        "b": ("adb49029f66f426bb046", 82.6),
        "l": ("b5308d092b034f81aac0", 83.2),
    }
    for v, size in _SIZES.items():
        key, miou = ade_official[v]
        out.append(
            Weights(
                name=f"segnext_{v}_ade20k_official",
                url=_TSINGHUA.format(key),
                filename=f"segnext.{size}.512x512.ade.160k.pth",
                format="pytorch",
                family="official",
                variant=f"segnext_{v}",
                dataset="ADE20K",
                num_classes=150,
                class_names=ADE20K_CLASSES,
                palette=ADE20K_PALETTE,
                nmf_rank=_RANK_OFFICIAL[v],
                crop_size=(512, 512),
                miou=miou,
                reported="single scale, ADE20K val; SegNeXt README and paper Table 9",
                licence=LICENCES["ADE20K"] + _CODE_LICENCE["official"],
                publisher="the SegNeXt authors (Tsinghua cloud)",
                imagery=_ADE_IMAGERY,
                gsd_note="ground-level photos (no GSD)",
            )
        )
        key, miou = city_official[v]
        out.append(
            Weights(
                name=f"segnext_{v}_cityscapes",
                url=_TSINGHUA.format(key),
                filename=f"segnext.{size}.1024x1024.city.160k.pth",
                format="pytorch",
                family="official",
                variant=f"segnext_{v}",
                dataset="Cityscapes",
                num_classes=19,
                class_names=CITYSCAPES_CLASSES,
                palette=CITYSCAPES_PALETTE,
                nmf_rank=_RANK_OFFICIAL[v],
                crop_size=(1024, 1024),
                miou=miou,
                reported="single scale, Cityscapes val; SegNeXt README and paper Table 9",
                licence=LICENCES["Cityscapes"] + _CODE_LICENCE["official"],
                publisher="the SegNeXt authors (Tsinghua cloud)",
                imagery=_CITY_IMAGERY,
                gsd_note="street-level photos (no GSD)",
            )
        )
    ade_jittor = {"t": 41.4, "s": 44.3, "b": 48.5, "l": 51.0}
    for v, size in _SIZES.items():
        filename = f"segnext_{size}_512x512_ade_160k.pkl"
        out.append(
            Weights(
                name=f"segnext_{v}_ade20k_jittor",
                url=_JITTOR + filename,
                filename=filename,
                format="jittor",
                family="official",
                variant=f"segnext_{v}",
                dataset="ADE20K",
                num_classes=150,
                class_names=ADE20K_CLASSES,
                palette=ADE20K_PALETTE,
                nmf_rank=_RANK_OFFICIAL[v],
                crop_size=(512, 512),
                miou=ade_jittor[v],
                reported="single scale, ADE20K val; JSeg README",
                licence=LICENCES["ADE20K"] + _CODE_LICENCE["jittor"],
                publisher="the SegNeXt authors' Jittor port (JSeg)",
                imagery=_ADE_IMAGERY,
                gsd_note="ground-level photos (no GSD)",
                sha1_trailer=True,
            )
        )
        filename = f"segnext_{size}_1024x1024_city_160k.pkl"
        out.append(
            Weights(
                name=f"segnext_{v}_cityscapes_jittor",
                url=_JITTOR + filename,
                filename=filename,
                format="jittor",
                family="official",
                variant=f"segnext_{v}",
                dataset="Cityscapes",
                num_classes=19,
                class_names=CITYSCAPES_CLASSES,
                palette=CITYSCAPES_PALETTE,
                nmf_rank=_RANK_OFFICIAL[v],
                crop_size=(1024, 1024),
                miou=None,
                reported="no score published for the Jittor file",
                licence=LICENCES["Cityscapes"] + _CODE_LICENCE["jittor"],
                publisher="the SegNeXt authors' Jittor port (JSeg)",
                imagery=_CITY_IMAGERY,
                gsd_note="street-level photos (no GSD)",
                sha1_trailer=True,
            )
        )
    mscan_mmseg = {"t": "119e8c9f", "s": "f33ccdf2", "b": "3ab7d230", "l": "cef260d4"}
    top1 = {"t": 75.9, "s": 81.2, "b": 83.0, "l": 83.9}
    for v, sha in mscan_mmseg.items():
        for fmt in ("pytorch", "jittor"):
            jittor = fmt == "jittor"
            filename = f"mscan_{v}.pkl" if jittor else f"mscan_{v}_20230227-{sha}.pth"
            out.append(
                Weights(
                    name=f"mscan_{v}_jittor" if jittor else f"mscan_{v}",
                    url=_JITTOR + filename if jittor else f"{_MMSEG}pretrain/segnext/{filename}",
                    filename=filename,
                    format=fmt,
                    family="mscan-imagenet",
                    variant=f"segnext_{v}",
                    dataset="ImageNet-1k",
                    num_classes=None,
                    class_names=(),
                    palette=(),
                    nmf_rank=None,
                    crop_size=(224, 224),
                    miou=None,
                    reported=f"ImageNet-1k top-1 {top1[v]} %, SegNeXt paper Table 3 (a backbone: no mIoU)",
                    licence=LICENCES["ImageNet-1k"] + _CODE_LICENCE["jittor" if jittor else "mmseg"],
                    publisher="the SegNeXt authors' Jittor port (JSeg)" if jittor else "mmsegmentation 1.x (OpenMMLab)",
                    imagery=_MSCAN_IMAGERY,
                    gsd_note="n/a: ImageNet-1k classification photos (no GSD)",
                    sha256_prefix=None if jittor else sha,
                    sha1_trailer=jittor,
                )
            )
    return out


def _order(w: Weights) -> tuple[int, int]:
    """The 16 main entries first (iSAID, ADE20K, Cityscapes, ImageNet), then the alternative files."""
    groups = ("_isaid", "_ade20k", "_cityscapes", "mscan_", "_ade20k_official", "_ade20k_jittor", "_cityscapes_jittor")
    rank = next((i for i, g in reversed(list(enumerate(groups))) if g in w.name), len(groups))
    if w.name.startswith("mscan_") and w.name.endswith("_jittor"):
        rank = len(groups)
    return rank, "tsbl".index(w.variant[-1])


_CATALOGUE: dict[str, Weights] = {w.name: w for w in sorted(_entries(), key=_order)}

#: Per variant: backbone float elements, BatchNorm layers, head elements without ``conv_seg``,
#: ``conv_seg`` input channels, last-stage width (checked against real models by the tests).
_STATE_COUNTS: dict[str, tuple[int, int, int, int, int]] = {
    "segnext_t": (3_911_040, 31, 321_280, 256, 256),
    "segnext_s": (13_463_040, 25, 444_160, 256, 512),
    "segnext_b": (26_303_744, 47, 1_281_536, 512, 512),
    "segnext_l": (44_683_008, 81, 4_135_936, 1024, 512),
}


def estimated_size(weights: Weights) -> int:
    """The file size in bytes: ``size_bytes`` when published, else float32 weights plus BatchNorm counters.

    ImageNet backbones are assumed to include their 1000-class classifier. Pickle overhead
    (well under 1 %) is not counted.
    """
    if weights.size_bytes:
        return weights.size_bytes
    backbone, bn, head, channels, last = _STATE_COUNTS[weights.variant]
    counters = 0 if weights.format == "jittor" else 8 * bn  # Jittor files have no num_batches_tracked
    if weights.backbone_only:
        return 4 * (backbone + 1000 * last + 1000) + counters
    return 4 * (backbone + head + (channels + 1) * (weights.num_classes or 0)) + counters


def list_weights(dataset: str | None = None) -> list[Weights]:
    """Every catalogue entry (optionally only those of ``dataset``, case-insensitive), in catalogue order."""
    entries = list(_CATALOGUE.values())
    if dataset is not None:
        entries = [w for w in entries if w.dataset.lower() == dataset.lower()]
    return entries


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def find_weights(name: str) -> Weights | None:
    """The entry called ``name`` (case and ``-``/``_`` insensitive), or ``None``."""
    return _CATALOGUE.get(_normalise(name)) or next(
        (w for w in _CATALOGUE.values() if _normalise(w.name) == _normalise(name)), None
    )


def suggest_weights(name: str) -> list[str]:
    """Up to three catalogue names close to ``name`` (for "did you mean" messages)."""
    return difflib.get_close_matches(_normalise(name), list(_CATALOGUE), n=3, cutoff=0.6)


def get_weights(name: str) -> Weights:
    """The entry called ``name``.

    Raises:
        KeyError: no such entry; the message lists close names.
    """
    w = find_weights(name)
    if w is None:
        close = suggest_weights(name)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see list_weights()"
        raise KeyError(f"no pretrained weights called {name!r}{hint}")
    return w


def register_weights(weights: Weights, replace: bool = False) -> Weights:
    """Add an entry (an organisation's own model, or a test fixture); refuses to replace one unless asked."""
    key = _normalise(weights.name)
    if key in _CATALOGUE and not replace:
        raise ValueError(f"weights {weights.name!r} are already in the catalogue (pass replace=True)")
    _CATALOGUE[key] = weights
    return weights


def unregister_weights(name: str) -> None:
    """Remove an entry added with :func:`register_weights` (no error when absent)."""
    _CATALOGUE.pop(_normalise(name), None)


def weights_for_filename(filename: str) -> Weights | None:
    """The entry whose cache file is called ``filename``, if any."""
    return next((w for w in _CATALOGUE.values() if w.filename == filename), None)


def weights_for_url(url: str) -> Weights | None:
    """The entry published at ``url``, if any."""
    return next((w for w in _CATALOGUE.values() if w.url == url), None)
