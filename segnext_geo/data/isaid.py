"""iSAID: the raw layout (folders or the original zip archives), the patch converter, and the patch dataset.

The converter reproduces mmsegmentation's ``tools/dataset_converters/isaid.py``
(see ``../shared/docs/segnext-reference.md`` §4):

- 896×896 windows with overlap 384 (stride 512); window starts run over
  ``0, stride, 2·stride, … < W`` (x outer loop, y inner loop) and a window that
  would cross the border is pulled back to end at it;
- images with a side shorter than the patch are padded at the bottom/right
  (image 0, label 255) first;
- mask colours map to ids through the 16-colour iSAID palette; unknown colours
  become 0 and are counted;
- patches are ``img_dir/{split}/P0000_{y0}_{y1}_{x0}_{x1}.png`` and
  ``ann_dir/{split}/P0000_{y0}_{y1}_{x0}_{x1}_instance_color_RGB.png`` (8-bit
  palette PNG); test images are copied whole.

Deliberate differences from mmseg: image patches are real PNGs (mmseg writes BMP
bytes under a ``.png`` name), duplicate windows are written once, and a side of
exactly the patch size next to a shorter one is padded too (mmseg's strict ``<``/``>``
tests skip that case and then slice with a negative start).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..models.meta import ISAID_CLASSES, ISAID_PALETTE
from .palette import IGNORE_INDEX, rgb_to_ids, save_palette_png

__all__ = [
    "ISAID",
    "ISAID_CLASSES",
    "ISAID_PALETTE",
    "ISAID_SPLITS",
    "MASK_SUFFIX",
    "PrepareReport",
    "RawFile",
    "patch_windows",
    "prepare_isaid",
    "scan_raw_split",
]

ISAID_SPLITS: tuple[str, ...] = ("train", "val", "test")
MASK_SUFFIX = "_instance_color_RGB"
_MASK_RE = re.compile(r"^(?P<name>[^_/]+)_instance_color_RGB\.png$", re.IGNORECASE)
_IMAGE_RE = re.compile(r"^(?P<name>[^_/]+)\.png$", re.IGNORECASE)


# --------------------------------------------------------------------------- raw layout


@dataclass(frozen=True)
class RawFile:
    """One raw image or mask: a file on disk, or a member of a zip archive."""

    name: str
    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        """How the file is named in messages: ``path`` or ``archive.zip:member``."""
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        try:
            if self.member is None:
                return self.path.read_bytes()
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(self.member)
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise UserError(f"{self.label}: cannot read ({e})") from None

    def open(self) -> Image.Image:
        """The decoded-on-demand PIL image (header only until pixels are touched)."""
        data = self.read_bytes()
        if not data:
            raise UserError(f"{self.label}: empty file")
        try:
            with _no_pixel_limit():
                img = Image.open(io.BytesIO(data))
                img.size  # noqa: B018 - forces the header to be parsed
            return img
        except Exception as e:  # PIL raises many types for broken files
            raise UserError(f"{self.label}: not a readable image ({e})") from None

    def rgb(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 pixels."""
        img = self.open()
        try:
            with _no_pixel_limit():
                return np.asarray(img.convert("RGB"))
        except Exception as e:
            raise UserError(f"{self.label}: not a readable image ({e})") from None


@contextmanager
def _no_pixel_limit() -> Iterator[None]:
    """iSAID scenes reach 100+ megapixels; lift PIL's decompression-bomb guard while reading them."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _scan(folder: Path, pattern: re.Pattern[str]) -> dict[str, RawFile]:
    """Files matching ``pattern`` in ``folder`` and inside every ``*.zip`` there (any member folder)."""
    found: dict[str, RawFile] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        if p.is_file() and (m := pattern.match(p.name)):
            found.setdefault(m["name"], RawFile(m["name"], p))
        elif p.is_file() and p.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(p) as zf:
                    members = sorted(zf.namelist())
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"{p}: not a readable zip archive ({e})") from None
            for member in members:
                if member.endswith("/") or member.startswith("__MACOSX"):
                    continue
                if m := pattern.match(member.rsplit("/", 1)[-1]):
                    found.setdefault(m["name"], RawFile(m["name"], p, member))
    return found


@dataclass
class RawSplit:
    """The images (and, for train/val, colour masks) of one raw iSAID split, keyed by image id."""

    split: str
    images: dict[str, RawFile]
    masks: dict[str, RawFile]


def scan_raw_split(raw_dir: str | Path, split: str) -> RawSplit:
    """Find ``{split}/images/*.png`` and ``{split}/Semantic_masks/*_instance_color_RGB.png``.

    Either folder may hold the PNGs or the original zip archives (``part1.zip`` …).
    Every train/val image needs its mask and vice versa; the first that lacks
    its partner is named in the error.
    """
    root = Path(raw_dir) / split
    images = _scan(root / "images", _IMAGE_RE)
    masks = _scan(root / "Semantic_masks", _MASK_RE) if split != "test" else {}
    if not images:
        raise UserError(f"{root / 'images'}: no iSAID images (*.png or zip archives of them) found")
    if split != "test":
        for name, f in images.items():
            if name not in masks:
                raise UserError(
                    f"{f.label}: no mask {name}{MASK_SUFFIX}.png in {root / 'Semantic_masks'} (folder or zip)"
                )
        for name, f in masks.items():
            if name not in images:
                raise UserError(f"{f.label}: mask without image {name}.png in {root / 'images'}")
    return RawSplit(split, images, masks)


# --------------------------------------------------------------------------- windows


def patch_windows(height: int, width: int, patch: int = 896, overlap: int = 384) -> list[tuple[int, int, int, int]]:
    """Patch windows ``(y0, y1, x0, x1)`` (pixels, end exclusive) over an image, as the mmseg converter cuts them.

    ``height``/``width`` are the image size before padding; a side shorter than
    ``patch`` is padded to ``patch`` first. Windows start every ``patch - overlap``
    pixels (x outer, y inner loop); the last one is pulled back to end at the edge.
    Duplicates (which mmseg writes twice) are kept once, in first-seen order.
    """
    if patch <= 0 or overlap < 0 or overlap >= patch:
        raise UserError(f"--overlap {overlap}: must be >= 0 and smaller than --patch-size {patch}")
    h, w = max(height, patch), max(width, patch)
    stride = patch - overlap
    out: dict[tuple[int, int, int, int], None] = {}
    for x in range(0, w, stride):
        for y in range(0, h, stride):
            x0, y0 = min(x, w - patch), min(y, h - patch)
            out[(y0, y0 + patch, x0, x0 + patch)] = None
    return list(out)


def _pad(a: np.ndarray, patch: int, value: int) -> np.ndarray:
    """Pad bottom/right so that both sides are at least ``patch`` (as ``mmcv.impad``)."""
    h, w = a.shape[:2]
    ph, pw = max(patch - h, 0), max(patch - w, 0)
    if ph == 0 and pw == 0:
        return a
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, widths, mode="constant", constant_values=value)


def _patch_name(name: str, win: tuple[int, int, int, int]) -> str:
    y0, y1, x0, x1 = win
    return f"{name}_{y0}_{y1}_{x0}_{x1}"


# --------------------------------------------------------------------------- converter


@dataclass
class _Job:
    split: str
    image: RawFile
    mask: RawFile | None


@dataclass
class _JobResult:
    split: str
    name: str
    patches: int
    skipped: bool
    unknown_pixels: int = 0
    unknown_colours: dict[str, int] = field(default_factory=dict)


def _save_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        img.save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _convert(job: _Job, out_dir: Path, patch: int, overlap: int) -> _JobResult:
    """Cut one raw image (and its mask) into patches; skip it when every patch already exists."""
    img_dir = out_dir / "img_dir" / job.split
    name = job.image.name
    if job.mask is None:  # test split: the whole image is copied
        target = img_dir / f"{name}.png"
        if target.exists() and target.stat().st_size > 0:
            return _JobResult(job.split, name, 1, True)
        data = job.image.read_bytes()
        if not data:
            raise UserError(f"{job.image.label}: empty file")
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return _JobResult(job.split, name, 1, False)

    ann_dir = out_dir / "ann_dir" / job.split
    width, height = job.image.open().size
    windows = patch_windows(height, width, patch, overlap)
    targets = [
        (img_dir / f"{_patch_name(name, w)}.png", ann_dir / f"{_patch_name(name, w)}{MASK_SUFFIX}.png") for w in windows
    ]
    if all(a.exists() and b.exists() for a, b in targets):
        return _JobResult(job.split, name, len(windows), True)

    image = job.image.rgb()
    mask_rgb = job.mask.rgb()
    if mask_rgb.shape[:2] != image.shape[:2]:
        raise UserError(
            f"{job.mask.label}: mask is {mask_rgb.shape[1]}x{mask_rgb.shape[0]} px "
            f"but image {job.image.label} is {image.shape[1]}x{image.shape[0]} px"
        )
    mapped = rgb_to_ids(mask_rgb, ISAID_PALETTE, fill=0)
    del mask_rgb
    image = _pad(image, patch, 0)
    ids = _pad(mapped.ids, patch, IGNORE_INDEX)
    for (y0, y1, x0, x1), (img_path, ann_path) in zip(windows, targets, strict=True):
        _save_png(Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1])), img_path)
        save_palette_png(np.ascontiguousarray(ids[y0:y1, x0:x1]), ISAID_PALETTE, ann_path)
    colours = dict(sorted(mapped.unknown_colours.items(), key=lambda kv: -kv[1])[:5])
    return _JobResult(
        job.split,
        name,
        len(windows),
        False,
        mapped.unknown_pixels,
        {",".join(map(str, c)): n for c, n in colours.items()},
    )


@dataclass
class PrepareReport:
    """What :func:`prepare_isaid` did, per split: images converted, skipped (already done) and patches."""

    out_dir: str
    patch_size: int
    overlap: int
    converted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    patches: dict[str, int] = field(default_factory=dict)
    unknown_pixels: int = 0
    #: image id -> {"pixels": n, "colours": {"r,g,b": n}} for masks with colours outside the palette
    unknown_masks: dict[str, dict[str, object]] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI."""
        lines = []
        for split in self.patches:
            lines.append(
                f"{split:5s}: {self.converted.get(split, 0)} images converted, "
                f"{self.skipped.get(split, 0)} already done, {self.patches[split]} patches"
            )
        if self.unknown_pixels:
            name, info = next(iter(self.unknown_masks.items()))
            colours = ", ".join(f"rgb({c}) {n} px" for c, n in info["colours"].items())  # type: ignore[attr-defined]
            lines.append(
                f"unknown mask colours: {self.unknown_pixels} px in {len(self.unknown_masks)} masks set to 0 "
                f"(background); first: {name}: {colours}"
            )
        else:
            lines.append("unknown mask colours: none")
        lines.append(f"output: {self.out_dir}")
        return lines


def prepare_isaid(
    raw_dir: str | Path,
    out_dir: str | Path,
    patch_size: int = 896,
    overlap: int = 384,
    splits: tuple[str, ...] = ISAID_SPLITS,
    workers: int = 1,
    progress: bool = True,
) -> PrepareReport:
    """Convert raw iSAID (folders or zips) into mmseg-style patches under ``out_dir``.

    Splits missing from ``raw_dir`` are skipped (at least one must exist). A second
    run skips images whose patches all exist, so an interrupted run can simply be
    started again. Writes ``out_dir/prepare_isaid.json`` with the report.
    """
    raw = Path(raw_dir)
    out = Path(out_dir)
    if not raw.is_dir():
        raise UserError(f"{raw}: raw iSAID folder not found")
    patch_windows(patch_size, patch_size, patch_size, overlap)  # validates the options
    present = [s for s in splits if (raw / s).is_dir()]
    if not present:
        raise UserError(f"{raw}: no {'/'.join(splits)} folder (expected {raw}/train/images, {raw}/val/images, ...)")
    jobs: list[_Job] = []
    for split in present:
        rs = scan_raw_split(raw, split)
        (out / "img_dir" / split).mkdir(parents=True, exist_ok=True)
        if split != "test":
            (out / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
        jobs += [_Job(split, f, rs.masks.get(name)) for name, f in rs.images.items()]

    report = PrepareReport(str(out), patch_size, overlap)
    for split in present:
        report.converted[split] = report.skipped[split] = report.patches[split] = 0
    for r in _run_jobs(jobs, out, patch_size, overlap, workers, progress):
        report.patches[r.split] += r.patches
        if r.skipped:
            report.skipped[r.split] += 1
        else:
            report.converted[r.split] += 1
        if r.unknown_pixels:
            report.unknown_pixels += r.unknown_pixels
            report.unknown_masks[f"{r.split}/{r.name}"] = {"pixels": r.unknown_pixels, "colours": r.unknown_colours}
    _write_json(asdict(report), out / "prepare_isaid.json")
    return report


def _run_jobs(jobs: list[_Job], out: Path, patch: int, overlap: int, workers: int, progress: bool) -> list[_JobResult]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="prepare-isaid", unit="image", disable=not progress)
    results: list[_JobResult] = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(_convert(job, out, patch, overlap))
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_convert, job, out, patch, overlap) for job in jobs]
                for fut in futures:
                    results.append(fut.result())
                    bar.update()
    finally:
        bar.close()
    return results


def _write_json(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- dataset


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
            return np.array(img.convert(mode) if mode else img)
    except Exception as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
