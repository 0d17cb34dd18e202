"""The ``data`` section of a training config: dataset, bands, normalisation, loader sizes and augmentation.

It lives next to the data code, which reads it (:func:`~segnext_geo.data.build.build_data`); the
training config (:mod:`segnext_geo.train.config`) embeds it as ``Config.data``, so imports run one
way: train -> data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataSection"]


@dataclass
class DataSection:
    """Dataset, band/normalisation choice, loader sizes and the augmentation pipeline.

    ``dataset``: ``isaid`` (prepared patches under ``root``), ``geotiff`` (image and
    label rasters), ``synthetic`` (download-free shapes) or a torchgeo dataset name
    (``LoveDA``, ``Potsdam2D`` …, read from ``root``; ``options`` go to its constructor).
    ``batch_size`` is the total per optimiser step, split over devices, nodes and
    gradient-accumulation steps. Sizes are pixels; ``crop_size`` is ``[h, w]`` and
    ``img_scale`` is the ``[long, short]`` side bound of the keep-ratio resize;
    ``test_scale`` that of the test-time resize, after which ``test_size_divisor``
    (JSeg's ``ResizeToMultiple``) resizes again up to the next multiple of it.
    """

    dataset: str = "isaid"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    options: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    ignore_index: int = 255
    batch_size: int = 16
    val_batch_size: int = 1
    num_workers: int = 4
    img_scale: list[int] = field(default_factory=lambda: [896, 896])
    ratio_range: list[float] | None = field(default_factory=lambda: [0.5, 2.0])
    crop_size: list[int] = field(default_factory=lambda: [896, 896])
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    test_scale: list[int] | None = field(default_factory=lambda: [896, 896])
    test_size_divisor: int | None = None
    train_images: str | list[str] | None = None
    train_labels: str | list[str] | None = None
    val_images: str | list[str] | None = None
    val_labels: str | list[str] | None = None
    image_glob: str = "*.tif"
    label_glob: str = "*.tif"
    chip_size: int | None = None
    samples_per_epoch: int = 1000
    val_stride: int | None = None
