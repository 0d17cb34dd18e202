"""The mmsegmentation training and test pipelines, on numpy arrays with an explicit random generator.

Training (``configs/_base_/datasets/isaid.py`` in mmseg, identical in JSeg):
Resize (``img_scale``, ``ratio_range`` 0.5–2.0, keep ratio) -> RandomCrop
(``cat_max_ratio`` 0.75) -> RandomFlip (0.5) -> PhotoMetricDistortion -> Normalize
-> Pad to the crop size (image 0, label 255). Test: Resize (keep ratio) -> Normalize;
labels stay at their original size (predictions are resized back to them).

Every random draw comes from the ``numpy.random.Generator`` passed in, so a
sample's augmentation depends only on that generator's seed (see
:class:`~segnext_geo.data.dataset.SegDataset`), not on worker or rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .palette import IGNORE_INDEX

__all__ = [
    "EvalPipeline",
    "TrainPipeline",
    "normalize",
    "photometric_distortion",
    "random_crop",
    "rescale_size",
    "resize",
]


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """New ``(height, width)`` for a keep-ratio resize to ``scale`` (as ``mmcv.rescale_size``).

    The long side is bounded by ``max(scale)`` and the short side by ``min(scale)``.
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize ``(H, W, C)`` image bilinearly (no antialiasing, like cv2) and ``(H, W)`` label by nearest neighbour.

    ``size`` is ``(height, width)``. uint8 images are rounded and stay uint8.
    """
    if image.shape[:2] == tuple(size):
        return image, label
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    if image.dtype == np.uint8:
        out = t.round_().clamp_(0, 255).to(torch.uint8).numpy()
    else:
        out = t.numpy().astype(image.dtype, copy=False)
    if label is not None:
        lt = torch.from_numpy(np.ascontiguousarray(label))[None, None]
        label = F.interpolate(lt.float(), size=size, mode="nearest")[0, 0].to(lt.dtype).numpy()
    return out, label


def _crop_box(shape: tuple[int, ...], crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    margin_h, margin_w = max(shape[0] - crop[0], 0), max(shape[1] - crop[1], 0)
    y0, x0 = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    return y0, y0 + crop[0], x0, x0 + crop[1]


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop``: up to 10 tries to find a crop where no class covers ``cat_max_ratio`` or more.

    ``crop`` is ``(height, width)``; an image smaller than the crop is returned
    whole (it is padded later). The try logic is mmseg's: check, then redraw.
    """
    y0, y1, x0, x1 = _crop_box(image.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            counts = np.bincount(label[y0:y1, x0:x1].ravel(), minlength=ignore_index + 1)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, y1, x0, x1 = _crop_box(image.shape, crop, rng)
    return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _to_hsv8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with H in 0..179 and S, V in 0..255 (OpenCV's 8-bit convention)."""
    from matplotlib.colors import rgb_to_hsv

    hsv = rgb_to_hsv(rgb.astype(np.float32) / 255.0)
    out = np.empty(rgb.shape, dtype=np.uint8)
    out[..., 0] = np.round(hsv[..., 0] * 180.0).astype(np.int32) % 180
    out[..., 1] = np.round(hsv[..., 1] * 255.0)
    out[..., 2] = np.round(hsv[..., 2] * 255.0)
    return out


def _from_hsv8(hsv: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    f = np.empty(hsv.shape, dtype=np.float32)
    f[..., 0] = hsv[..., 0] / 180.0
    f[..., 1] = hsv[..., 1] / 255.0
    f[..., 2] = hsv[..., 2] / 255.0
    return np.clip(np.round(hsv_to_rgb(f) * 255.0), 0, 255).astype(np.uint8)


def photometric_distortion(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on a uint8 ``(H, W, C)`` image.

    Brightness, then contrast (first or last, by coin flip), saturation and hue,
    each applied with probability 0.5. Saturation and hue need 3-band RGB and are
    skipped for other band counts; non-uint8 images are returned unchanged.
    """
    if img.dtype != np.uint8:
        return img
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    rgb = img.shape[2] == 3
    if rng.integers(2) and rgb:
        hsv = _to_hsv8(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = _from_hsv8(hsv)
    if rng.integers(2) and rgb:
        hsv = _to_hsv8(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-hue_delta, hue_delta))) % 180
        img = _from_hsv8(hsv)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(H, W, C)`` image -> ``(C, H, W)`` float32 tensor ``(x - mean) / std`` per band."""
    if image.shape[2] != len(mean) or len(mean) != len(std):
        raise ValueError(f"image has {image.shape[2]} bands but mean/std have {len(mean)}/{len(std)} values")
    # contiguous (C, H, W): a channels-last stride pattern here makes CPU convolutions ~10x slower
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().contiguous()
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (t - m) / s


@dataclass
class TrainPipeline:
    """The mmseg training augmentation. ``img_scale`` is ``(long, short)`` side bounds, ``crop_size`` ``(h, w)``."""

    mean: Sequence[float]
    std: Sequence[float]
    img_scale: tuple[int, int] = (896, 896)
    ratio_range: tuple[float, float] | None = (0.5, 2.0)
    crop_size: tuple[int, int] = (896, 896)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """``(H, W, C)`` image and ``(H, W)`` ids -> ``(C, h, w)`` float32 and ``(h, w)`` int64 at ``crop_size``."""
        scale = self.img_scale
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            ratio = rng.random() * (hi - lo) + lo
            scale = (int(scale[0] * ratio), int(scale[1] * ratio))
        image, resized = resize(image, label, rescale_size(image.shape[0], image.shape[1], scale))
        assert resized is not None
        label = resized
        image, label = random_crop(image, label, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        img = normalize(image, self.mean, self.std)
        lab = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        ph, pw = self.crop_size[0] - img.shape[1], self.crop_size[1] - img.shape[2]
        if ph > 0 or pw > 0:
            img = F.pad(img, (0, max(pw, 0), 0, max(ph, 0)), value=0.0)
            lab = F.pad(lab, (0, max(pw, 0), 0, max(ph, 0)), value=self.ignore_index)
        return img, lab


@dataclass
class EvalPipeline:
    """Test-time pipeline: keep-ratio resize to ``img_scale`` (``None``: none), then normalise; labels untouched.

    ``size_divisor`` then resizes the image again so that both sides are the next
    multiple of it (JSeg's and mmseg's ``ResizeToMultiple``: ``mmcv.imresize_to_multiple``
    with ``scale_factor=1``, sides rounded up; a no-op on sides that already are).
    """

    mean: Sequence[float]
    std: Sequence[float]
    img_scale: tuple[int, int] | None = None
    size_divisor: int | None = None

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[Tensor, Tensor]:
        """-> ``(C, h, w)`` float32 image, ``(H, W)`` int64 label at the original size."""
        if self.img_scale is not None:
            image, _ = resize(image, None, rescale_size(image.shape[0], image.shape[1], self.img_scale))
        if self.size_divisor:
            d = self.size_divisor
            image, _ = resize(image, None, (-(-image.shape[0] // d) * d, -(-image.shape[1] // d) * d))
        return normalize(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
