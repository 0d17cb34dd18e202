"""Data: the mmseg augmentation, epoch/rank sampling, the dataset wrapper, and torchgeo sources
(LoveDA in its real on-disk layout, GeoTIFF image + label rasters through RasterDataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from segnext_geo.data.build import build_data, check_dataset_name
from segnext_geo.data.dataset import EpochSampler, SegDataset
from segnext_geo.data.synthetic import SyntheticShapes
from segnext_geo.data.transforms import (
    EvalPipeline,
    TrainPipeline,
    normalize,
    photometric_distortion,
    random_crop,
    rescale_size,
    resize,
)
from segnext_geo.errors import UserError
from segnext_geo.models import load_model
from segnext_geo.train.config import load_config

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


# ---------------------------------------------------------------------------- transforms


def test_rescale_size_is_mmcv_keep_ratio() -> None:
    assert rescale_size(100, 200, (896, 896)) == (448, 896)
    assert rescale_size(1024, 1024, (2048, 512)) == (512, 512)  # the LoVEDA setting
    assert rescale_size(896, 896, (448, 448)) == (448, 448)
    assert rescale_size(300, 500, (800, 600)) == (480, 800)


def _bilinear_reference(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Half-pixel-centre bilinear interpolation (cv2 INTER_LINEAR, torch align_corners=False), float64."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, wy = axis(image.shape[0], size[0])
    x0, x1, wx = axis(image.shape[1], size[1])
    a = image.astype(np.float64)
    rows = a[y0] * (1 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def test_resize_is_bilinear_for_images_and_nearest_for_labels() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    label = rng.integers(0, 16, (37, 53)).astype(np.uint8)
    for size in ((70, 101), (60, 41), (18, 26)):  # up, mixed, down (no antialiasing, as cv2 and mmcv)
        out, lab = resize(image, label, size)
        assert out.dtype == np.uint8 and out.shape == (*size, 3) and out.flags.c_contiguous
        error = out.astype(np.float64) - _bilinear_reference(image, size)
        assert np.abs(error).max() <= 1.0 and abs(error.mean()) < 0.05  # within a grey level, unbiased
        rows = np.floor(np.arange(size[0]) * 37 / size[0]).astype(int)
        cols = np.floor(np.arange(size[1]) * 53 / size[1]).astype(int)
        assert lab is not None and np.array_equal(lab, label[rows][:, cols])  # cv2 INTER_NEAREST
    floats = image.astype(np.float32)
    before = floats.copy()
    normalize(floats, MEAN, STD)
    assert np.array_equal(floats, before)  # float input is never normalised in place
    out, _ = resize(floats, None, (70, 101))
    assert out.dtype == np.float32 and np.abs(out - _bilinear_reference(image, (70, 101))).max() < 1e-3


def _blocks(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Large flat blocks whose colour encodes the class: red = 30 + 60 * class."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 4, (h // 16, w // 16)), np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
    image = np.stack([30 + 60 * label, np.full_like(label, 100), np.full_like(label, 50)], axis=-1).astype(np.uint8)
    return image, label


def test_train_pipeline_keeps_image_and_label_aligned() -> None:
    pipe = TrainPipeline(MEAN, STD, img_scale=(96, 96), ratio_range=(0.5, 2.0), crop_size=(64, 64), photometric=False)
    image, label = _blocks(96, 128, 0)
    padded_seen = False
    for seed in range(12):
        img, lab = pipe(image, label, np.random.default_rng(seed))
        assert img.shape == (3, 64, 64) and img.dtype == torch.float32
        assert lab.shape == (64, 64) and lab.dtype == torch.int64
        red = img[0] * STD[0] + MEAN[0]
        valid = lab != 255
        cls = ((red - 30) / 60).round().clamp(0, 3).long()
        assert (cls[valid] == lab[valid]).float().mean() > 0.9  # only resize-blended block edges differ
        if (~valid).any():  # padding: image 0 after normalisation, label 255
            padded_seen = True
            assert (img[:, ~valid] == 0).all()
    assert padded_seen  # ratio 0.5 makes the image smaller than the crop


def test_train_pipeline_is_mmsegs_steps_in_order() -> None:
    """The fast path (crop chosen on the label, only the crop transposed and flipped) gives exactly the
    tensors of mmseg's steps one after the other: resize, RandomCrop, flip, photometric, normalise, pad."""
    rng0 = np.random.default_rng(11)
    image = rng0.integers(0, 256, (90, 120, 3)).astype(np.uint8)
    label = np.kron(rng0.integers(0, 3, (9, 12)), np.ones((10, 10), dtype=np.int64)).astype(np.uint8)
    pipe = TrainPipeline(MEAN, STD, img_scale=(120, 90), ratio_range=(0.5, 2.0), crop_size=(64, 64))
    for seed in range(10):
        img, lab = pipe(image, label, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        ratio = rng.random() * 1.5 + 0.5
        im, lb = resize(image, label, rescale_size(90, 120, (int(120 * ratio), int(90 * ratio))))
        assert lb is not None
        im, lb = random_crop(im, lb, (64, 64), rng, cat_max_ratio=0.75)
        if rng.random() < 0.5:
            im, lb = im[:, ::-1], lb[:, ::-1]
        ref = normalize(photometric_distortion(np.ascontiguousarray(im), rng), MEAN, STD)
        h, w = lb.shape
        assert torch.equal(img[:, :h, :w], ref) and (img[:, h:] == 0).all() and (img[:, :, w:] == 0).all(), seed
        assert torch.equal(lab[:h, :w], torch.from_numpy(lb.astype(np.int64))) and (lab[h:] == 255).all(), seed


def test_random_crop_avoids_single_class_crops() -> None:
    label = np.zeros((64, 64), dtype=np.uint8)
    label[40:56, 40:56] = 1
    image = np.zeros((64, 64, 3), dtype=np.uint8)

    def mixed(ratio: float) -> int:
        n = 0
        for seed in range(40):
            _, crop = random_crop(image, label, (24, 24), np.random.default_rng(seed), cat_max_ratio=ratio)
            assert crop.shape == (24, 24)
            counts = np.bincount(crop.ravel(), minlength=2)
            n += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return n

    assert mixed(0.75) > 2 * mixed(1.0)


# An independent reference for PhotoMetricDistortion: mmseg's transform (mmseg 0.x
# ``datasets/pipelines/transforms.py``, identical in JSeg) with OpenCV's 8-bit colour conversions
# (``mmcv.bgr2hsv``/``hsv2bgr`` = ``cv2.cvtColor``) written out pixel by pixel from OpenCV's
# ``color_hsv.simd.hpp``: fixed-point RGB2HSV_b, float HSV2RGB as its SIMD path runs it
# (``1 - s*f`` rounded once, as the FMA the compiler makes; the result truncated by ``v_trunc``).
_F32 = np.float32
_SECTORS_BGR = [[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]]


def _cv_rgb2hsv(r: int, g: int, b: int) -> tuple[int, int, int]:
    v, vmin = max(r, g, b), min(r, g, b)
    diff = v - vmin
    sdiv = round((255 << 12) / v) if v else 0
    hdiv = round((180 << 12) / (6 * diff)) if diff else 0
    s = (diff * sdiv + (1 << 11)) >> 12
    if v == r:
        h = g - b
    elif v == g:
        h = b - r + 2 * diff
    else:
        h = r - g + 4 * diff
    h = (h * hdiv + (1 << 11)) >> 12
    return (h + 180 if h < 0 else h), s, v


def _cv_hsv2rgb(h: int, s: int, v: int, rounding: bool = False) -> tuple[int, int, int]:
    hh = _F32(h) * (_F32(6.0) / _F32(180))
    sf, vf = _F32(s) * (_F32(1.0) / _F32(255.0)), _F32(v) * (_F32(1.0) / _F32(255.0))
    sector = int(hh)
    f = hh - _F32(sector)
    tab = [
        vf,
        vf * (_F32(1.0) - sf),
        vf * _F32(1.0 - float(sf) * float(f)),
        vf * _F32(1.0 - float(sf) * float(_F32(1.0) - f)),
    ]
    b, g, r = (tab[i] * _F32(255.0) for i in _SECTORS_BGR[sector % 6])
    if rounding:  # OpenCV's scalar path (the last pixels of a row that fill no SIMD block)
        return round(float(r)), round(float(g)), round(float(b))
    return int(r), int(g), int(b)


def _mmseg_photometric(img: np.ndarray, rng: np.random.Generator, rounding: bool = False) -> np.ndarray:
    """mmseg's PhotoMetricDistortion, pixel by pixel, drawing from ``rng`` in mmseg's order."""

    def convert(a: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(a.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def to_hsv(a: np.ndarray) -> np.ndarray:
        return np.array([[_cv_rgb2hsv(*map(int, px)) for px in row] for row in a], dtype=np.uint8)

    def to_rgb(a: np.ndarray) -> np.ndarray:
        return np.array([[_cv_hsv2rgb(*map(int, px), rounding) for px in row] for row in a], dtype=np.uint8)

    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = convert(img, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = to_hsv(img)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        img = to_rgb(hsv)
    if rng.integers(2):
        hsv = to_hsv(img)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rng.integers(-18, 18)) % 180
        img = to_rgb(hsv)
    if mode == 0 and rng.integers(2):
        img = convert(img, alpha=rng.uniform(0.5, 1.5))
    return img


def test_hsv_conversions_are_opencvs() -> None:
    from segnext_geo.data.colour import hsv_to_rgb, rgb_to_hsv

    # values printed by cv2.cvtColor (opencv-python-headless 4.8.1 and 5.0.0, rows of 64 pixels)
    rgb = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (200, 120, 40), (10, 200, 100)]])
    assert rgb_to_hsv(rgb.astype(np.uint8)).tolist() == [
        [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128], [15, 204, 200], [74, 242, 200]]
    ]
    hsv = np.array([[(15, 200, 180), (179, 255, 255), (95, 77, 200), (30, 128, 128), (1, 90, 85), (0, 0, 77)]])
    assert hsv_to_rgb(hsv.astype(np.uint8)).tolist() == [
        [[180, 109, 38], [255, 0, 8], [139, 189, 200], [128, 128, 63], [85, 56, 55], [77, 77, 77]]
    ]
    # against the reference written out above: random colours, every grey, every pure hue
    rng = np.random.default_rng(0)
    colours = np.concatenate(
        [rng.integers(0, 256, (3000, 3)), np.repeat(np.arange(256)[:, None], 3, 1), [[255, 0, 0], [255, 255, 0]]]
    ).astype(np.uint8)[None]
    assert rgb_to_hsv(colours)[0].tolist() == [list(_cv_rgb2hsv(*map(int, c))) for c in colours[0]]
    triples = np.stack([rng.integers(0, 180, 3000), rng.integers(0, 256, 3000), rng.integers(0, 256, 3000)], -1)
    triples = triples.astype(np.uint8)[None]
    assert hsv_to_rgb(triples)[0].tolist() == [list(_cv_hsv2rgb(*map(int, t))) for t in triples[0]]
    # OpenCV rounds instead of truncating in the few pixels at a row's end that fill no SIMD block: one grey level
    rounded = np.array([_cv_hsv2rgb(*map(int, t), rounding=True) for t in triples[0]])
    off = np.abs(hsv_to_rgb(triples)[0].astype(int) - rounded)
    assert off.max() == 1


def test_photometric_distortion_matches_mmseg() -> None:
    image = np.random.default_rng(7).integers(0, 256, (12, 16, 3)).astype(np.uint8)
    for seed in range(24):
        ours = photometric_distortion(image, np.random.default_rng(seed))
        assert np.array_equal(ours, _mmseg_photometric(image, np.random.default_rng(seed))), seed


def test_photometric_distortion_is_seeded_and_bounded() -> None:
    image, _ = _blocks(32, 32, 1)
    a = photometric_distortion(image, np.random.default_rng(3))
    b = photometric_distortion(image, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == image.shape
    outs = {photometric_distortion(image, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(outs) > 4
    rgbn = np.dstack([image, image[..., :1]])  # 4 bands: brightness/contrast only
    assert photometric_distortion(rgbn, np.random.default_rng(3)).shape == (32, 32, 4)
    floats = image.astype(np.float32)
    assert photometric_distortion(floats, np.random.default_rng(3)) is floats  # non-8-bit: untouched


def test_eval_pipeline_resizes_the_image_not_the_label() -> None:
    image, label = _blocks(64, 96, 2)
    img, lab = EvalPipeline(MEAN, STD, (48, 48))(image, label)
    assert tuple(img.shape) == (3, 32, 48) and tuple(lab.shape) == (64, 96)
    # JSeg's test pipeline: keep-ratio resize to 896, then up to a multiple of 32
    jseg = EvalPipeline(MEAN, STD, (896, 896), size_divisor=32)
    square = np.zeros((800, 800, 3), dtype=np.uint8)
    assert tuple(jseg(square, square[..., 0])[0].shape) == (3, 896, 896)  # a JSeg 800 patch
    whole = np.zeros((600, 1000, 3), dtype=np.uint8)  # an image JSeg copied whole: 0.896 x -> 538 x 896 -> 544 x 896
    img, lab = jseg(whole, whole[..., 0])
    assert tuple(img.shape) == (3, 544, 896) and tuple(lab.shape) == (600, 1000)
    flat = np.full((600, 1000, 3), 77, dtype=np.uint8)
    assert torch.allclose(jseg(flat, flat[..., 0])[0][0], torch.tensor((77 - MEAN[0]) / STD[0]))  # values kept


# ---------------------------------------------------------------------------- sampling and dataset


def test_epoch_sampler_shards_ranks_and_resumes() -> None:
    def sampler(rank: int, world: int, even: bool = True, shuffle: bool = True) -> EpochSampler:
        return EpochSampler(lambda e: range(10), 10, shuffle=shuffle, seed=5, rank=rank, world_size=world, even=even)

    r0, r1 = sampler(0, 2), sampler(1, 2)
    a, b = [k for k, _, _ in r0], [k for k, _, _ in r1]
    assert len(a) == len(b) == len(r0) == 5 and not set(a) & set(b) and len(set(a) | set(b)) == 10
    assert [k for k, _, _ in sampler(0, 2)] == a  # deterministic
    r0.set_epoch(1)
    assert [k for k, _, _ in r0] != a and {e for _, e, _ in r0} == {1}
    odd = [sampler(r, 3) for r in range(3)]
    assert [len(list(s)) for s in odd] == [3, 3, 3]  # training: equal steps per rank
    val = [sampler(r, 3, even=False, shuffle=False) for r in range(3)]
    assert sorted(k for s in val for k, _, _ in s) == list(range(10)) and [len(s) for s in val] == [4, 3, 3]
    s = sampler(0, 1)
    full = [k for k, _, _ in s]
    s.skip_next(4)
    assert [k for k, _, _ in s] == full[4:]
    assert [k for k, _, _ in s] == full  # the skip applies to one pass only


class _FourBands:
    """A minimal source: 4-band images whose band b holds the value 10 * b."""

    def __len__(self) -> int:
        return 3

    def describe(self, key: int) -> str:
        return f"four-band sample {key}"

    def load(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.stack([np.full((32, 32), 10 * b, dtype=np.uint8) for b in (1, 2, 3, 4)], axis=-1)
        label = np.zeros((32, 32), dtype=np.uint8)
        label[0, 0] = 7 if key == 2 else 1
        return image, label


def test_dataset_selects_bands_seeds_augmentation_and_checks_labels() -> None:
    ev = SegDataset(_FourBands(), EvalPipeline((0, 0, 0), (1, 1, 1)), num_classes=3, bands=(4, 2, 1))
    assert ev[0]["image"][:, 0, 0].tolist() == [40.0, 20.0, 10.0]
    with pytest.raises(UserError, match=r"four-band sample 2: label value 7 is not a class id \(0\.\.2\)"):
        ev[2]
    with pytest.raises(UserError, match=r"four-band sample 0: has 4 bands; data\.bands asks for \[5\]"):
        SegDataset(_FourBands(), EvalPipeline((0,), (1,)), 3, bands=(5,))[0]

    src = SyntheticShapes("train", 4, 64)
    tr = SegDataset(src, TrainPipeline(MEAN, STD, (64, 64), (0.5, 2.0), (48, 48)), 4, (1, 2, 3), seed=0)
    x1, x2, x3 = tr[(1, 0, 1)], tr[(1, 0, 1)], tr[(1, 1, 1)]
    assert torch.equal(x1["image"], x2["image"]) and torch.equal(x1["mask"], x2["mask"])
    assert not torch.equal(x1["image"], x3["image"])  # another epoch, another augmentation
    assert int(x1["id"]) == 1


def test_synthetic_shapes_are_deterministic_and_held_out() -> None:
    a, b = SyntheticShapes("train", 4, 64, seed=0), SyntheticShapes("val", 4, 64, seed=0)
    img, lab = a.load(0)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2, 3}
    assert np.array_equal(img, SyntheticShapes("train", 4, 64, seed=0).load(0)[0])
    assert not np.array_equal(img, b.load(0)[0])


def test_unknown_dataset_names_get_a_suggestion() -> None:
    assert check_dataset_name("ISAID") == "isaid"
    assert check_dataset_name("loveda") == "LoveDA"
    assert check_dataset_name("inria_aerial_image_labeling") == "InriaAerialImageLabeling"
    with pytest.raises(UserError, match=r"data\.dataset=Postdam2D: unknown dataset \(did you mean 'Potsdam2D'\?\)"):
        check_dataset_name("Postdam2D")


# ---------------------------------------------------------------------------- torchgeo: LoveDA


def write_loveda(root: Path, n: int = 4) -> Path:
    """torchgeo's LoveDA layout: {Train,Val}/{Urban,Rural}/{images_png,masks_png}/<id>.png, masks 0 = no-data."""
    rng = np.random.default_rng(0)
    for split in ("Train", "Val"):
        for scene in ("Urban", "Rural"):
            for sub in ("images_png", "masks_png"):
                (root / split / scene / sub).mkdir(parents=True)
            for i in range(n // 2):
                image, label = _blocks(64, 64, int(rng.integers(1 << 30)))
                mask = label + 1  # LoveDA ids 1..7; 0 marks no-data
                mask[:4] = 0
                Image.fromarray(image).save(root / split / scene / "images_png" / f"{i}.png")
                Image.fromarray(mask).save(root / split / scene / "masks_png" / f"{i}.png")
    return root


def test_loveda_in_its_real_layout_trains(tmp_path: Path) -> None:
    from segnext_geo.train.fit import train

    root = write_loveda(tmp_path / "LoveDA")
    cfg = load_config(
        None,
        [
            "data.dataset=LoveDA",
            f"data.root={root}",
            "data.options={scene: [urban, rural]}",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.img_scale=64",
            "data.crop_size=48",
            "data.test_scale=null",
            "schedule.iters=2",
            "schedule.warmup_iters=1",
            "trainer.val_interval=2",
            "trainer.accelerator=cpu",
            "trainer.progress_bar=false",
            f"trainer.out_dir={tmp_path / 'run'}",
        ],
    )
    bundle = build_data(cfg.data)
    assert bundle.class_names == ["background", "building", "road", "water", "barren", "forest", "agriculture"]
    _, label = bundle.sources["train"].load(0)
    raw = np.asarray(Image.open(bundle.sources["train"].describe(0).replace("images_png", "masks_png")))
    assert np.array_equal(label, np.where(raw == 0, 255, raw.astype(np.int64) - 1))  # reduce_zero_label

    result = train(cfg)
    assert result.steps == 2
    model = load_model(result.best)
    assert model.meta.class_names[1] == "building" and model.meta.extra["dataset"] == "LoveDA"

    (root / "Val" / "Rural" / "masks_png" / "1.png").unlink()
    with pytest.raises(UserError, match=r"Val/Rural/masks_png/1\.png: file missing"):
        build_data(cfg.data)
    with pytest.raises(UserError, match=r"data\.root=.*nowhere: folder not found"):
        build_data(load_config(None, ["data.dataset=LoveDA", f"data.root={tmp_path / 'nowhere'}"]).data)


# ---------------------------------------------------------------------------- GeoTIFF rasters


def write_geotiffs(root: Path, bands: int = 3) -> Path:
    """An image GeoTIFF (EPSG:32633, 0.5 m) and a label raster with nodata 255, for train and val."""
    for split, x0 in (("train", 500000.0), ("val", 520000.0)):
        (root / split).mkdir(parents=True)
        image, label = _blocks(128, 160, 7 if split == "train" else 8)
        label[:8, :8] = 255
        if bands != 3:
            image = np.dstack([image] + [image[..., :1]] * (bands - 3))
        profile = {
            "driver": "GTiff",
            "width": 160,
            "height": 128,
            "crs": "EPSG:32633",
            "transform": from_origin(x0, 5200000.0, 0.5, 0.5),
        }
        with rasterio.open(root / split / "image.tif", "w", count=bands, dtype="uint8", **profile) as dst:
            dst.write(np.moveaxis(image, -1, 0))
        with rasterio.open(root / split / "label.tif", "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
            dst.write(label[None])
    return root


def _geotiff_sets(root: Path, tmp_path: Path) -> list[str]:
    return [
        "data.dataset=geotiff",
        f"data.train_images={root / 'train' / 'image.tif'}",
        f"data.train_labels={root / 'train' / 'label.tif'}",
        f"data.val_images={root / 'val' / 'image.tif'}",
        f"data.val_labels={root / 'val' / 'label.tif'}",
        "data.class_names=[a, b, c, d]",
        "data.chip_size=64",
        "data.samples_per_epoch=8",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.img_scale=64",
        "data.crop_size=64",
        "data.test_scale=null",
        "schedule.iters=2",
        "schedule.warmup_iters=1",
        "trainer.val_interval=2",
        "trainer.accelerator=cpu",
        "trainer.progress_bar=false",
        f"trainer.out_dir={tmp_path / 'run'}",
    ]


def test_geotiff_rasters_random_chips_grid_validation_and_training(tmp_path: Path) -> None:
    from segnext_geo.train.fit import train

    root = write_geotiffs(tmp_path / "rasters")
    cfg = load_config(None, _geotiff_sets(root, tmp_path))
    bundle = build_data(cfg.data)
    train_src, val_src = bundle.sources["train"], bundle.sources["val"]
    e0, e1 = train_src.epoch_keys(0, 0), train_src.epoch_keys(1, 0)
    assert len(e0) == 8 and e0 == train_src.epoch_keys(0, 0) and e0 != e1  # new random chips every epoch
    with rasterio.open(root / "train" / "image.tif") as src:
        full = np.moveaxis(src.read(), 0, -1)
    for key in e0:
        image, _ = train_src.load(key)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        col, row = round((key[0].start - 500000.0) / 0.5), round((5200000.0 - key[1].stop) / 0.5)
        assert np.array_equal(image, full[row : row + 64, col : col + 64])  # chips are pixel-aligned reads
    grid = val_src.epoch_keys(0, 0)
    assert len(val_src) == len(grid) == 6  # 3 x 2 chips of 64 px cover 160 x 128
    labels = np.concatenate([val_src.load(k)[1].ravel() for k in grid])
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 255} and (labels == 255).any()  # nodata and outside -> ignore

    result = train(cfg)
    assert result.steps == 2 and load_model(result.best).meta.class_names == ["a", "b", "c", "d"]

    four = write_geotiffs(tmp_path / "rgbn", bands=4)
    sets = _geotiff_sets(four, tmp_path)
    with pytest.raises(UserError, match=r"data\.mean/data\.std: required for 4-band 8-bit imagery"):
        build_data(load_config(None, [*sets, "data.bands=[1,2,3,4]"]).data)
    assert build_data(load_config(None, sets).data).bands == (1, 2, 3)
    with pytest.raises(UserError, match=r"data\.train_labels=.*nothing\.tif: no raster"):
        build_data(load_config(None, [*sets, f"data.train_labels={tmp_path / 'nothing.tif'}"]).data)


def test_data_code_does_not_import_the_trainer() -> None:
    """Imports run one way (train -> data): the data code, config section included, never loads train/."""
    import subprocess
    import sys

    code = (
        "import sys, segnext_geo.data.build, segnext_geo.data.isaid_prepare, segnext_geo.data.transforms; "
        "print(sorted(m for m in sys.modules if m.startswith(('segnext_geo.train', 'segnext_geo.inference'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    data_dir = Path(__file__).resolve().parents[1] / "segnext_geo" / "data"
    backwards = [  # not even for type checking
        f"{p.name}: {line.strip()}"
        for p in sorted(data_dir.glob("*.py"))
        for line in p.read_text().splitlines()
        if line.strip().startswith(("from ..train", "from ..inference", "import segnext_geo.train"))
    ]
    assert backwards == []
