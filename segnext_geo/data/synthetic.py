"""A download-free synthetic segmentation task: coloured shapes on textured ground.

Used by ``configs/cpu_smoke.yaml``, the tests and ``benchmarks/train_synthetic.py``.
Class 0 is the ground; class ``k`` shapes have their own shape kind and a hue
band with random brightness, so the task is learnable but not a colour lookup
(ground patches can take any hue at low saturation). Every image is a pure
function of ``(seed, split, index)``: train and val never share an image.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SyntheticShapes"]

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_KINDS = ("rectangle", "ellipse", "triangle", "ring", "cross", "diamond", "bar")


class SyntheticShapes:
    """``num_images`` RGB images of ``size``×``size`` px with up to ``num_classes - 1`` shape classes.

    ``load(i)`` returns ``(image (size, size, 3) uint8, label (size, size) uint8)``.
    """

    def __init__(
        self, split: str = "train", num_images: int = 64, size: int = 96, num_classes: int = 4, seed: int = 0
    ) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {', '.join(_SPLIT_IDS)}, not {split!r}")
        if not 2 <= num_classes <= len(_KINDS) + 1:
            raise ValueError(f"num_classes must be 2..{len(_KINDS) + 1}, not {num_classes}")
        if size < 32:
            raise ValueError(f"size must be >= 32 px, not {size}")
        self.split = split
        self.num_images = int(num_images)
        self.size = int(size)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.classes = ("background", *_KINDS[: num_classes - 1])

    def __len__(self) -> int:
        return self.num_images

    def describe(self, index: int) -> str:
        return f"synthetic {self.split} image {index}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], int(index)])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        # textured ground: a low-saturation random tint plus smooth noise
        base = rng.uniform(60, 190) + rng.uniform(-25, 25, size=3)
        coarse = rng.normal(0, 18, size=(s // 8 + 1, s // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:s, :s]
        image = base + coarse + rng.normal(0, 8, size=(s, s, 3))
        label = np.zeros((s, s), dtype=np.uint8)
        for _ in range(int(rng.integers(2, 6))):
            k = int(rng.integers(1, self.num_classes))
            mask = self._shape(_KINDS[k - 1], rng, xx, yy)
            hue = (k - 1) / (self.num_classes - 1)
            colour = _hue_rgb(hue + rng.uniform(-0.04, 0.04)) * rng.uniform(120, 250)
            image[mask] = colour + rng.normal(0, 10, size=(int(mask.sum()), 3))
            label[mask] = k
        return np.clip(image, 0, 255).astype(np.uint8), label

    def _shape(self, kind: str, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        s = self.size
        cx, cy = rng.uniform(0.15 * s, 0.85 * s, size=2)
        r = rng.uniform(0.08 * s, 0.2 * s)
        dx, dy = xx - cx, yy - cy
        if kind == "rectangle":
            return (np.abs(dx) < r) & (np.abs(dy) < r * rng.uniform(0.5, 1.0))
        if kind == "ellipse":
            return (dx / r) ** 2 + (dy / (r * rng.uniform(0.5, 1.0))) ** 2 < 1
        if kind == "triangle":
            return (dy < r) & (dy > -r) & (np.abs(dx) < (dy + r) / 2)
        if kind == "ring":
            d = np.hypot(dx, dy)
            return (d < r) & (d > 0.55 * r)
        if kind == "cross":
            w = 0.3 * r
            return ((np.abs(dx) < w) & (np.abs(dy) < r)) | ((np.abs(dy) < w) & (np.abs(dx) < r))
        if kind == "diamond":
            return np.abs(dx) + np.abs(dy) < r
        return (np.abs(dx) < r * 1.5) & (np.abs(dy) < 0.25 * r)


def _hue_rgb(h: float) -> np.ndarray:
    """A fully saturated RGB direction (components 0..1) for hue ``h`` in turns."""
    h = h % 1.0
    return np.clip(np.abs(((h * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0) - 3.0) - 1.0, 0.0, 1.0)
