"""From the ``data`` section of a config to sources, class names, palette, bands and normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..models.meta import IMAGENET_MEAN, IMAGENET_STD, ISAID_CLASSES, ISAID_PALETTE, default_palette
from . import gsd as gsd_info
from .dataset import SegSource
from .section import DataSection

__all__ = ["BUILTIN_DATASETS", "DataBundle", "build_data", "check_dataset_name"]

#: Dataset kinds that are not torchgeo datasets.
BUILTIN_DATASETS: tuple[str, ...] = ("isaid", "geotiff", "synthetic")
_SYNTHETIC_OPTIONS = ("num_train", "num_val", "size", "num_classes", "seed")


@dataclass
class DataBundle:
    """Everything the trainer needs to know about a dataset. ``sources`` maps ``train``/``val`` to sources."""

    dataset: str
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[int, ...]
    sources: dict[str, SegSource] = field(default_factory=dict)
    gsd_m: float | None = None
    gsd_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.bands)


def check_dataset_name(name: str) -> str:
    """Canonical lower-case name for ``data.dataset`` or a one-line error with a suggestion."""
    key = name.strip().lower()
    if key in BUILTIN_DATASETS:
        return key
    from . import torchgeo as tg

    spec = tg.resolve_torchgeo_name(key)
    if spec is not None:
        return spec.cls_name
    choices = list(BUILTIN_DATASETS) + tg.torchgeo_names()
    raise UserError(
        f"data.dataset={name}: unknown dataset{tg.suggest(name, choices)}; use isaid, geotiff, synthetic "
        f"or a torchgeo segmentation dataset ({', '.join(tg.torchgeo_names()[:7])}, ...)"
    )


def _require_root(cfg: DataSection) -> Path:
    if not cfg.root:
        raise UserError(f"data.root: required for dataset {cfg.dataset} (the folder that holds it)")
    return Path(cfg.root).expanduser()


def _split_name(cfg: DataSection, role: str) -> str:
    return cfg.train_split if role == "train" else cfg.val_split


def build_data(cfg: DataSection, roles: Sequence[str] = ("train", "val")) -> DataBundle:
    """Open the sources for ``roles`` (``train``, ``val``) and resolve classes, palette, bands and mean/std.

    Raises:
        UserError: unknown dataset name, missing or malformed dataset (the first bad
            file is named), or classes/bands/normalisation that do not fit it.
    """
    name = check_dataset_name(cfg.dataset)
    sources: dict[str, SegSource] = {}
    classes: Sequence[str]
    palette: Sequence[Sequence[int]] | None = None
    eight_bit, n_bands = True, 3
    gsd = gsd_info.SYNTHETIC_GSD
    if name == "isaid":
        from .isaid import ISAID

        root = _require_root(cfg)
        for role in roles:
            sources[role] = ISAID(root, _split_name(cfg, role))
        classes, palette = ISAID_CLASSES, ISAID_PALETTE
        gsd = gsd_info.ISAID_GSD
    elif name == "synthetic":
        from .synthetic import SyntheticShapes

        opts = dict(cfg.options)
        unknown = sorted(set(opts) - set(_SYNTHETIC_OPTIONS))
        if unknown:
            raise UserError(f"data.options: synthetic takes {', '.join(_SYNTHETIC_OPTIONS)}, not {', '.join(unknown)}")
        common = {k: opts[k] for k in ("size", "num_classes", "seed") if k in opts}
        counts = {"train": int(opts.get("num_train", 64)), "val": int(opts.get("num_val", 16))}
        try:
            for role in roles:
                split = _split_name(cfg, role)
                sources[role] = SyntheticShapes(split, counts.get(split, counts[role]), **common)
        except ValueError as e:
            raise UserError(f"data.options: {e}") from None
        first = next(iter(sources.values()), None)
        classes = first.classes if isinstance(first, SyntheticShapes) else SyntheticShapes(**common).classes
    elif name == "geotiff":
        from .torchgeo import GeoTiffSource

        if not cfg.class_names:
            raise UserError("data.class_names: required for dataset geotiff (one name per label value 0, 1, ...)")
        classes = cfg.class_names
        chip = cfg.chip_size or cfg.crop_size[0]
        for role in roles:
            images = cfg.train_images if role == "train" else cfg.val_images
            labels = cfg.train_labels if role == "train" else cfg.val_labels
            if not images or not labels:
                raise UserError(f"data.{role}_images / data.{role}_labels: required for dataset geotiff")
            sources[role] = GeoTiffSource(
                images,
                labels,
                chip,
                train=role == "train",
                length=cfg.samples_per_epoch,
                stride=cfg.val_stride,
                image_glob=cfg.image_glob,
                label_glob=cfg.label_glob,
                option_name=f"data.{role}_images",
            )
        given = [(cfg.train_images if role == "train" else cfg.val_images) or [] for role in roles]
        gsd = gsd_info.geotiff_gsd([f for g in given for f in gsd_info.image_files(g, cfg.image_glob)])
        first = next(iter(sources.values()), None)
        if isinstance(first, GeoTiffSource):
            eight_bit, n_bands = first.image_dtype == "uint8", first.band_count
    else:
        from .torchgeo import TorchgeoSource, resolve_torchgeo_name

        spec = resolve_torchgeo_name(name)
        assert spec is not None
        root = _require_root(cfg)
        tg_sources = {role: TorchgeoSource(spec, root, _split_name(cfg, role), cfg.options) for role in roles}
        sources.update(tg_sources)
        first_tg = next(iter(tg_sources.values()), None)
        classes = first_tg.classes if first_tg else (spec.class_names or ())
        palette = first_tg.palette if first_tg else None
        gsd = gsd_info.torchgeo_gsd(spec.cls_name)

    if cfg.class_names is not None and name != "geotiff":
        if len(cfg.class_names) != len(classes):
            raise UserError(
                f"data.class_names: {len(cfg.class_names)} names given but {name} has {len(classes)} classes"
            )
        classes = cfg.class_names
    k = len(classes)
    if cfg.palette is not None:
        if len(cfg.palette) != k or any(len(c) != 3 for c in cfg.palette):
            raise UserError(f"data.palette: needs {k} [r, g, b] colours")
        palette = cfg.palette
    bands = tuple(cfg.bands) if cfg.bands else tuple(range(1, min(n_bands, 3) + 1))
    in_ch = len(bands)
    if cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif in_ch == 3 and eight_bit:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise UserError(
            f"data.mean/data.std: required for {in_ch}-band {'8-bit' if eight_bit else 'non-8-bit'} imagery "
            "(the ImageNet defaults only fit 8-bit RGB)"
        )
    return DataBundle(
        dataset=name,
        class_names=[str(c) for c in classes],
        palette=[tuple(int(v) for v in c) for c in (palette or default_palette(k))],  # type: ignore[misc]
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        bands=bands,
        sources=sources,
        gsd_m=gsd.gsd_m,
        gsd_note=gsd.note,
    )
