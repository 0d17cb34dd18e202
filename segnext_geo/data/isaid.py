"""iSAID patches on disk (mmseg layout) as a training/evaluation source, and the label checks.

Patches come from :func:`~segnext_geo.data.isaid_prepare.prepare_isaid` (either protocol):
``img_dir/{split}/P0000_{y0}_{y1}_{x0}_{x1}.png`` (or ``P0000.png`` for an image JSeg copies
whole) with ``ann_dir/{split}/…_instance_color_RGB.png`` holding 8-bit class ids 0..15 and
255 (ignore). Annotations that cannot hold those ids are refused with one line naming the
file: 1-bit PNGs (mmseg's own converter writes them with Pillow >= 9, turning ids
{0, 5, 255} into {0, 1}) and values outside the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..models.meta import ISAID_CLASSES, ISAID_PALETTE
from .palette import IGNORE_INDEX, rgb_to_ids

__all__ = ["ISAID", "ISAID_CLASSES", "ISAID_PALETTE", "ISAID_SPLITS", "MASK_SUFFIX"]

ISAID_SPLITS: tuple[str, ...] = ("train", "val", "test")
MASK_SUFFIX = "_instance_color_RGB"


class ISAID:
    """The prepared iSAID patches of one split: ``img_dir/{split}/*.png`` with their annotation PNGs.

    ``load(i)`` returns ``(image (H, W, 3) uint8 RGB, label (H, W) uint8 ids)``,
    255 = ignore; ``describe(i)`` names the image file. Construction checks that
    every image has a non-empty annotation and names the first that does not.
    """

    classes: tuple[str, ...] = ISAID_CLASSES
    palette: tuple[tuple[int, int, int], ...] = ISAID_PALETTE

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        self.split = split
        img_dir = self.root / "img_dir" / split
        ann_dir = self.root / "ann_dir" / split
        if not self.root.is_dir():
            raise UserError(f"{self.root}: iSAID folder not found (make it with: segnext-geo prepare-isaid RAW OUT)")
        if not img_dir.is_dir():
            raise UserError(f"{img_dir}: folder not found (is {self.root} a prepare-isaid output?)")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
        if not images:
            raise UserError(f"{img_dir}: no .png patches")
        self.files: list[tuple[Path, Path]] = []
        for img in images:
            ann = ann_dir / f"{img.stem}{MASK_SUFFIX}.png"
            if not ann.is_file():
                raise UserError(f"{ann}: annotation missing for {img}")
            for p in (img, ann):
                if p.stat().st_size == 0:
                    raise UserError(f"{p}: empty file")
            self.files.append((img, ann))
        _check_label_mode(self.files[0][1])  # one converter wrote them all: refuse a bad set before training

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index][0])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, ann_path = self.files[index]
        image = _read(img_path, "RGB")
        if _check_label_mode(ann_path) in ("RGB", "RGBA"):  # a colour mask rather than ids
            with Image.open(ann_path) as ann:
                label = rgb_to_ids(np.asarray(ann.convert("RGB")), ISAID_PALETTE).ids
        else:
            label = _read(ann_path, None)
            _check_label_values(label, ann_path)
        if label.shape != image.shape[:2]:
            raise UserError(f"{ann_path}: label is {label.shape[::-1]} px but image {img_path} is {image.shape[1::-1]}")
        return image, label

    def __getitem__(self, index: int) -> dict[str, object]:
        """``{"image": (3, H, W) uint8 tensor, "mask": (H, W) int64 tensor}``."""
        import torch

        image, label = self.load(index)
        return {"image": torch.from_numpy(image).permute(2, 0, 1), "mask": torch.from_numpy(label.astype(np.int64))}


_REDO = "make the patches with: segnext-geo prepare-isaid RAW OUT"
#: Annotation PNG modes that hold class ids (8 or 16 bit) or iSAID colours.
_LABEL_MODES = ("L", "P", "I", "I;16", "RGB", "RGBA")


def _check_label_mode(path: Path) -> str:
    """The PNG mode of an annotation (header only), or a one-line error for modes that cannot hold class ids."""
    try:
        with Image.open(path) as img:
            mode = str(img.mode)
    except Exception as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    if mode == "1":
        raise UserError(
            f"{path}: 1-bit label PNG (mode '1'): iSAID's class ids are lost (ids 0, 5, 255 read as 0, 1; mmseg's "
            f"converter writes such files with Pillow >= 9); {_REDO}"
        )
    if mode not in _LABEL_MODES:
        raise UserError(f"{path}: label PNG of mode {mode!r} cannot hold class ids (need 8-bit ids); {_REDO}")
    return mode


def _check_label_values(label: np.ndarray, path: Path) -> None:
    """Class ids must be 0..15 or 255 (ignore)."""
    if label.ndim != 2:
        raise UserError(f"{path}: label has {label.shape[2]} channels, expected one band of class ids; {_REDO}")
    if label.size and int(label.max()) >= len(ISAID_CLASSES):
        bad = (label >= len(ISAID_CLASSES)) & (label != IGNORE_INDEX)
        if bad.any():
            raise UserError(
                f"{path}: label value {int(label[bad].flat[0])} is not an iSAID class id (0..{len(ISAID_CLASSES) - 1}) "
                f"or {IGNORE_INDEX} (ignore); {_REDO}"
            )


def _read(path: Path, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img.convert(mode) if mode and img.mode != mode else img)  # no extra copy for RGB
    except Exception as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
