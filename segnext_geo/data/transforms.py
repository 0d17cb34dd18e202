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

from .colour import hsv_to_rgb_planes, rgb_to_hsv_planes
from .palette import IGNORE_INDEX

__all__ = [
    "EvalPipeline",
    "TrainPipeline",
    "crop_box",
    "normalize",
    "photometric_distortion",
    "random_crop",
    "rescale_size",
    "resize",
    "resize_label",
]


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """New ``(height, width)`` for a keep-ratio resize to ``scale`` (as ``mmcv.rescale_size``).

    The long side is bounded by ``max(scale)`` and the short side by ``min(scale)``.
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(H, W, C)`` to ``size`` ``(h, w)``, no antialiasing (as cv2 ``INTER_LINEAR``, mmcv).

    uint8 images use torch's uint8 kernel: fixed-point weights, rows then columns, each
    pass rounded (as PIL), so within one grey level of exact bilinear and ~10x faster
    than float (unbiased on average, except +0.25 at an exact 2x upscale, where both
    passes meet .5 ties); other dtypes are interpolated in float32 and keep their dtype.
    """
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # channels_last strides
    if image.dtype == np.uint8:
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
        return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
    out = F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy()).astype(image.dtype, copy=False)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(H, W)`` class ids: ``src = floor(dst * in / out)`` (cv2 ``INTER_NEAREST``)."""
    if label.shape[:2] == tuple(size):
        return label
    lt = torch.from_numpy(np.ascontiguousarray(label))[None, None]
    out = F.interpolate(lt if lt.dtype == torch.uint8 else lt.float(), size=size, mode="nearest")
    return out[0, 0].numpy().astype(label.dtype, copy=False)


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize ``(H, W, C)`` image bilinearly and ``(H, W)`` label by nearest neighbour to ``size`` ``(h, w)``.

    uint8 images stay uint8 (within one grey level of exact bilinear); labels take
    ``src = floor(dst * in / out)`` (cv2 ``INTER_NEAREST``).
    """
    if image.shape[:2] == tuple(size):
        return image, label
    return _resize_image(image, size), None if label is None else resize_label(label, size)


def _crop_box(shape: tuple[int, ...], crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    margin_h, margin_w = max(shape[0] - crop[0], 0), max(shape[1] - crop[1], 0)
    y0, x0 = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    return y0, min(y0 + crop[0], shape[0]), x0, min(x0 + crop[1], shape[1])


def crop_box(
    label: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[int, int, int, int]:
    """mmseg ``RandomCrop``'s window ``(y0, y1, x0, x1)``: up to 10 tries to avoid a class over ``cat_max_ratio``.

    ``crop`` is ``(height, width)``; a label smaller than the crop gives the whole of
    it (the sample is padded later). The try logic is mmseg's: check, then redraw.
    """
    y0, y1, x0, x1 = _crop_box(label.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            window = torch.from_numpy(np.ascontiguousarray(label[y0:y1, x0:x1])).reshape(-1)
            counts = torch.bincount(window, minlength=ignore_index + 1).numpy()  # 2x numpy's on uint8
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, y1, x0, x1 = _crop_box(label.shape, crop, rng)
    return y0, y1, x0, x1


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop`` of an image and its label (the window of :func:`crop_box`)."""
    y0, y1, x0, x1 = crop_box(label, crop, rng, cat_max_ratio, ignore_index)
    return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def _affine_lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert`` (``clip(img.astype(float32) * alpha + beta, 0, 255).astype(uint8)``) as a 256-entry table.

    The table holds exactly the float32 results mmseg computes per grey value.
    """
    return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)


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
    each applied with probability 0.5, drawing from ``rng`` in mmseg's order.
    Brightness and contrast are 256-entry lookup tables (composed when they follow
    each other) with mmseg's float32 values; saturation and hue go through OpenCV's
    8-bit HSV, reproduced exactly by :mod:`~segnext_geo.data.colour`. Saturation and
    hue need 3-band RGB and are skipped for other band counts; non-uint8 images are
    returned unchanged.
    """
    if img.dtype != np.uint8:
        return img
    chw = _photometric_chw(np.moveaxis(img, -1, 0), rng, brightness_delta, contrast_range, saturation_range, hue_delta)
    return np.ascontiguousarray(np.moveaxis(chw, 0, -1))


def _photometric_chw(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """:func:`photometric_distortion` on a channel-first ``(C, H, W)`` uint8 image (contiguous planes)."""
    lut: np.ndarray | None = None  # grey-value tables not applied yet

    def then(table: np.ndarray) -> None:
        nonlocal lut
        lut = table if lut is None else table[lut]

    def flush(a: np.ndarray) -> np.ndarray:
        nonlocal lut
        if lut is not None:
            a, lut = np.take(lut, a), None
        return a

    if rng.integers(2):
        then(_affine_lut(beta=rng.uniform(-brightness_delta, brightness_delta)))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        then(_affine_lut(alpha=rng.uniform(*contrast_range)))
    rgb = img.shape[0] == 3
    if rng.integers(2) and rgb:
        img = flush(img)
        h, s, v = rgb_to_hsv_planes(img[0], img[1], img[2])
        s = np.take(_affine_lut(alpha=rng.uniform(*saturation_range)), s)
        img = np.stack(hsv_to_rgb_planes(h, s, v))
    if rng.integers(2) and rgb:
        img = flush(img)
        h, s, v = rgb_to_hsv_planes(img[0], img[1], img[2])
        shift = int(rng.integers(-hue_delta, hue_delta))
        h = np.take(((np.arange(256) + shift) % 180).astype(np.uint8), h)
        img = np.stack(hsv_to_rgb_planes(h, s, v))
    if mode == 0 and rng.integers(2):
        then(_affine_lut(alpha=rng.uniform(*contrast_range)))
    return flush(img)


def _resized_crop_chw(
    image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int], flip: bool = False
) -> np.ndarray:
    """``box`` ``(y0, y1, x0, x1)`` of ``image`` ``(H, W, C)`` resized to ``size`` (and flipped left-right), as a
    contiguous ``(C, h, w)`` array.

    Same pixels as ``resize``, crop, flip; only the crop is ever transposed to channel-first,
    and it comes out contiguous (numpy is much slower on reversed strides).
    """
    y0, y1, x0, x1 = box
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (C, H, W) view of the HWC array
    if image.shape[:2] == tuple(size):
        crop = t[:, y0:y1, x0:x1]
    elif image.dtype == np.uint8:
        crop = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
        crop = crop[:, y0:y1, x0:x1]
    else:
        crop = F.interpolate(t[None].float(), size=size, mode="bilinear", align_corners=False)[0][:, y0:y1, x0:x1]
    crop = crop.flip(-1) if flip else crop.contiguous()
    return crop.numpy().astype(image.dtype, copy=False)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(H, W, C)`` image -> ``(C, H, W)`` float32 tensor ``(x - mean) / std`` per band."""
    return _normalize_chw(np.moveaxis(image, -1, 0), mean, std)


def _normalize_chw(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(C, H, W)`` image -> contiguous ``(C, H, W)`` float32 tensor ``(x - mean) / std`` per band."""
    if image.shape[0] != len(mean) or len(mean) != len(std):
        raise ValueError(f"image has {image.shape[0]} bands but mean/std have {len(mean)}/{len(std)} values")
    # contiguous (C, H, W): a channels-last stride pattern here makes CPU convolutions ~10x slower
    t = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32, copy=True)  # ours: normalised in place
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return t.sub_(m).div_(s)


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
        """``(H, W, C)`` image and ``(H, W)`` ids -> ``(C, h, w)`` float32 and ``(h, w)`` int64 at ``crop_size``.

        The steps and random draws are mmseg's; RandomCrop's window is chosen on the
        resized label, and the image is resized and then cut to it channel-first, so
        only the crop is ever transposed.
        """
        scale = self.img_scale
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            ratio = rng.random() * (hi - lo) + lo
            scale = (int(scale[0] * ratio), int(scale[1] * ratio))
        size = rescale_size(image.shape[0], image.shape[1], scale)
        label = resize_label(label, size)
        y0, y1, x0, x1 = crop_box(label, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
        flip = rng.random() < self.flip_prob
        chw = _resized_crop_chw(image, size, (y0, y1, x0, x1), flip)
        label = label[y0:y1, x0:x1][:, ::-1] if flip else label[y0:y1, x0:x1]
        if self.photometric and chw.dtype == np.uint8:
            chw = _photometric_chw(chw, rng)
        img = _normalize_chw(chw, self.mean, self.std)
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
