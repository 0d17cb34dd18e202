"""torchgeo datasets as training sources: named segmentation datasets, and the user's GeoTIFFs.

- :class:`TorchgeoSource`: a torchgeo ``NonGeoDataset`` selected by name
  (LoveDA, Potsdam2D, Vaihingen2D, InriaAerialImageLabeling, DeepGlobeLandCover,
  LandCoverAI, GID15, or any other with a ``split`` argument and a ``classes``
  list). The table :data:`NAMED` records what torchgeo leaves implicit: which
  torchgeo split serves as validation, the label coding and the class names.
- :class:`GeoTiffSource`: image and label rasters through torchgeo's
  ``RasterDataset`` and ``IntersectionDataset``, with ``RandomPatchSampler``
  chips (redrawn every epoch) for training and ``GriddedPatchSampler`` chips for
  validation.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torchgeo.datasets as tgd
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset, RasterDataset
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from ..errors import UserError
from .palette import IGNORE_INDEX

__all__ = ["NAMED", "GeoTiffSource", "TorchgeoSource", "TorchgeoSpec", "resolve_torchgeo_name", "torchgeo_names"]


@dataclass(frozen=True)
class TorchgeoSpec:
    """How to use one torchgeo dataset for SegNeXt training.

    ``splits`` maps our split names to torchgeo's; ``reduce_zero_label`` means
    mask value 0 is no-data (-> 255) and the others shift down by one (as mmseg
    does for LoVEDA); ``class_names`` overrides torchgeo's ``classes``.
    """

    cls_name: str
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    class_names: tuple[str, ...] | None = None
    reduce_zero_label: bool = False


_TRAIN_TEST = {"train": "train", "val": "test", "test": "test"}

#: Datasets with known label coding, by lower-case name.
NAMED: dict[str, TorchgeoSpec] = {
    "loveda": TorchgeoSpec(
        "LoveDA",
        class_names=("background", "building", "road", "water", "barren", "forest", "agriculture"),
        reduce_zero_label=True,
    ),
    "potsdam2d": TorchgeoSpec("Potsdam2D", _TRAIN_TEST),
    "vaihingen2d": TorchgeoSpec("Vaihingen2D", _TRAIN_TEST),
    "inriaaerialimagelabeling": TorchgeoSpec(
        "InriaAerialImageLabeling", {"train": "train", "val": "val", "test": "test"}, ("background", "building")
    ),
    "deepglobelandcover": TorchgeoSpec("DeepGlobeLandCover", _TRAIN_TEST),
    "landcoverai": TorchgeoSpec("LandCoverAI"),
    "gid15": TorchgeoSpec("GID15"),
}


def _segmentation_classes() -> dict[str, str]:
    """Lower-case name -> class name of every torchgeo NonGeoDataset taking ``root`` and ``split``."""
    out: dict[str, str] = {}
    for name in getattr(tgd, "__all__", dir(tgd)):
        obj = getattr(tgd, name, None)
        if inspect.isclass(obj) and issubclass(obj, NonGeoDataset) and not inspect.isabstract(obj):
            params = inspect.signature(obj.__init__).parameters
            if "root" in params and "split" in params:
                out[name.lower()] = name
    return out


def torchgeo_names() -> list[str]:
    """torchgeo dataset class names usable as ``data.dataset`` (the named ones first)."""
    named = [s.cls_name for s in NAMED.values()]
    return named + sorted(n for n in _segmentation_classes().values() if n not in named)


def resolve_torchgeo_name(name: str) -> TorchgeoSpec | None:
    """The spec for a torchgeo dataset name (any case), or ``None`` when torchgeo has no such dataset."""
    key = name.lower().replace("-", "").replace("_", "")
    if key in NAMED:
        return NAMED[key]
    classes = {k.replace("_", ""): v for k, v in _segmentation_classes().items()}
    if key in classes:
        return TorchgeoSpec(classes[key])
    return None


def suggest(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'X'?)`` or an empty string."""
    lower = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[match[0]]!r}?)" if match else ""


class TorchgeoSource:
    """One split of a named torchgeo dataset; ``load(i)`` -> ``(image (H, W, C), label (H, W) uint8)``.

    Images that torchgeo returns as float but that hold 8-bit values are given
    back as uint8 (so the photometric augmentation applies).
    """

    def __init__(self, spec: TorchgeoSpec, root: str | Path, split: str, options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        cls = getattr(tgd, spec.cls_name)
        if split not in spec.splits:
            raise UserError(f"data split {split!r}: {spec.cls_name} has splits {', '.join(spec.splits)}")
        tg_split = spec.splits[split]
        self.root = Path(root)
        if not self.root.exists():
            raise UserError(f"data.root={self.root}: folder not found ({spec.cls_name})")
        try:
            self.ds = cls(root=str(self.root), split=tg_split, **(options or {}))
        except DatasetNotFoundError:
            raise UserError(
                f"data.root={self.root}: no {spec.cls_name} dataset there (see torchgeo's {spec.cls_name} docs "
                "for the expected files; segnext-geo never downloads)"
            ) from None
        except TypeError as e:
            raise UserError(f"data.options: {spec.cls_name} does not accept them ({e})") from None
        except AssertionError as e:
            raise UserError(f"data split {tg_split!r}: rejected by {spec.cls_name} ({e})") from None
        if len(self.ds) == 0:
            raise UserError(f"data.root={self.root}: {spec.cls_name} {tg_split} split is empty")
        self._check_files()
        if spec.cls_name.lower() not in {n.cls_name.lower() for n in NAMED.values()}:
            first = self.ds[0]
            if "mask" not in first or first["mask"].ndim not in (2, 3):
                raise UserError(
                    f"data.dataset={spec.cls_name}: not a semantic segmentation dataset (its samples have "
                    f"{', '.join(sorted(first))}, no per-pixel 'mask')"
                )
        names = spec.class_names or tuple(getattr(self.ds, "classes", ()) or ())
        if not names:
            raise UserError(f"data.dataset={spec.cls_name}: torchgeo gives no class list; set data.class_names")
        self.classes: tuple[str, ...] = tuple(str(n) for n in names)
        colormap = getattr(self.ds, "colormap", None)
        self.palette: list[tuple[int, int, int]] | None = None
        if isinstance(colormap, (list, tuple)) and len(colormap) == len(self.classes):
            self.palette = [tuple(int(v) for v in c[:3]) for c in colormap]  # type: ignore[misc]

    def _check_files(self) -> None:
        """Name the first listed image or mask that is missing or empty (torchgeo only checks folders)."""
        files = getattr(self.ds, "files", None)
        if not isinstance(files, list):
            return
        for entry in files:
            paths = entry.values() if isinstance(entry, dict) else [entry]
            for p in paths:
                if isinstance(p, (str, Path)):
                    path = Path(p)
                    if not path.is_file():
                        raise UserError(f"{path}: file missing ({self.spec.cls_name} {self.root})")
                    if path.stat().st_size == 0:
                        raise UserError(f"{path}: empty file")

    def __len__(self) -> int:
        return len(self.ds)

    def describe(self, index: int) -> str:
        files = getattr(self.ds, "files", None)
        if isinstance(files, list) and index < len(files):
            entry = files[index]
            first = next(iter(entry.values())) if isinstance(entry, dict) else entry
            return str(first)
        return f"{self.spec.cls_name} {self.root} sample {index}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.ds[index]
        image = sample["image"].numpy()
        image = np.moveaxis(image, 0, -1) if image.ndim == 3 else image[:, :, None]
        if image.dtype != np.uint8 and image.size and image.min() >= 0 and image.max() <= 255:
            if np.array_equal(image, np.round(image)):
                image = image.astype(np.uint8)
        mask = sample["mask"].numpy().astype(np.int64)
        if mask.ndim == 3:
            mask = mask[0]
        if self.spec.reduce_zero_label:
            mask = np.where(mask == 0, IGNORE_INDEX, mask - 1)
        return image, mask


class _Imagery(RasterDataset):
    """Image rasters of a :class:`GeoTiffSource` (all bands, read as float, cast back to the file's dtype)."""

    is_image = True

    def __init__(self, paths: Any, filename_glob: str) -> None:
        self.filename_glob = filename_glob
        super().__init__(paths=paths)


class _Labels(RasterDataset):
    """Label rasters of a :class:`GeoTiffSource` (class ids; nearest-neighbour when reprojected)."""

    is_image = False

    def __init__(self, paths: Any, filename_glob: str, nodata: float | None) -> None:
        self.filename_glob = filename_glob
        self.nodata = nodata
        super().__init__(paths=paths)


def _first_file(paths: Any, pattern: str) -> Path | None:
    for p in [paths] if isinstance(paths, (str, Path)) else list(paths):
        path = Path(p)
        if path.is_file():
            return path
        if path.is_dir():
            found = sorted(path.rglob(pattern))
            if found:
                return found[0]
    return None


class GeoTiffSource:
    """Chips from image GeoTIFF(s) and a label raster covering them.

    ``images`` and ``labels`` are files, folders (searched recursively with
    ``filename_glob``) or lists of them. Labels are reprojected to the imagery's
    grid. Label pixels that are nodata, or outside the label raster, become 255.
    Training keys are ``length`` random chips of ``chip_size`` px drawn anew every
    epoch; validation keys are a grid with ``stride`` px (default: ``chip_size``).
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        chip_size: int,
        train: bool,
        length: int = 1000,
        stride: int | None = None,
        image_glob: str = "*.tif",
        label_glob: str = "*.tif",
        option_name: str = "data.train_images",
    ) -> None:
        self.chip_size = int(chip_size)
        self.train = train
        self.length = int(length)
        self.stride = int(stride or chip_size)
        self.name = f"{images}"
        first_label = _first_file(labels, label_glob)
        first_image = _first_file(images, image_glob)
        if first_image is None:
            raise UserError(f"{option_name}={images}: no raster matching {image_glob}")
        label_option = option_name.replace("images", "labels")
        if first_label is None:
            raise UserError(f"{label_option}={labels}: no raster matching {label_glob}")
        try:
            with rasterio.open(first_image) as src:
                self.image_dtype = np.dtype(src.dtypes[0])
                self.band_count = int(src.count)
            with rasterio.open(first_label) as src:
                declared = src.nodata
        except rasterio.errors.RasterioIOError as e:
            raise UserError(f"{e}") from None
        self.label_nodata = declared if declared is not None else IGNORE_INDEX
        try:
            image_ds = _Imagery(_paths(images), image_glob)
        except DatasetNotFoundError:
            raise UserError(f"{option_name}={images}: no readable raster matching {image_glob}") from None
        try:
            label_ds = _Labels(_paths(labels), label_glob, None if declared is not None else IGNORE_INDEX)
        except DatasetNotFoundError:
            raise UserError(f"{label_option}={labels}: no readable raster matching {label_glob}") from None
        try:
            self.ds = image_ds & label_ds
        except RuntimeError as e:
            raise UserError(f"{label_option}={labels}: does not overlap {option_name}={images} ({e})") from None
        if train:
            # fail now, not in the first epoch, when no chip fits inside the imagery
            if not list(RandomPatchSampler(self.ds, size=self.chip_size, length=1, generator=0)):
                raise UserError(f"{option_name}={images}: smaller than one {self.chip_size} px chip")
        self._grid: list[tuple[slice, slice]] | None = None

    def epoch_keys(self, epoch: int, seed: int) -> list[tuple[slice, slice]]:
        """Random chips (training, new every epoch) or the fixed validation grid."""
        if self.train:
            gen = np.random.default_rng([int(seed), int(epoch), 7919])
            return list(RandomPatchSampler(self.ds, size=self.chip_size, length=self.length, generator=gen))
        if self._grid is None:
            self._grid = list(GriddedPatchSampler(self.ds, size=self.chip_size, stride=self.stride))
        return self._grid

    def __len__(self) -> int:
        return self.length if self.train else len(self.epoch_keys(0, 0))

    def describe(self, key: Any) -> str:
        if isinstance(key, tuple) and all(isinstance(s, slice) for s in key):
            x, y = key[0], key[1]
            return f"{self.name} chip x={x.start:.3f}..{x.stop:.3f} y={y.start:.3f}..{y.stop:.3f}"
        return f"{self.name} chip {key}"

    def load(self, key: Any) -> tuple[np.ndarray, np.ndarray]:
        sample = self.ds[key]
        image = np.moveaxis(sample["image"].numpy(), 0, -1)
        if self.image_dtype == np.uint8:
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        mask = sample["mask"].numpy().astype(np.int64)
        if mask.ndim == 3:
            mask = mask[0]
        mask[mask == self.label_nodata] = IGNORE_INDEX
        return image, mask


def _paths(p: Any) -> Any:
    return str(p) if isinstance(p, (str, Path)) else [str(x) for x in p]
