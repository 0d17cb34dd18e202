"""Cut raw iSAID scenes into training/evaluation patches, by either of the two published protocols.

Both write the mmseg layout: ``img_dir/{split}/P0000_{y0}_{y1}_{x0}_{x1}.png`` image patches and
``ann_dir/{split}/P0000_{y0}_{y1}_{x0}_{x1}_instance_color_RGB.png`` 8-bit palette PNGs of class
ids (mask colours map to ids through the 16-colour iSAID palette; unknown colours become 0 and
are counted). Pixels are the source's own: windows are never resampled.

``mmseg`` (default) follows mmsegmentation's ``tools/dataset_converters/isaid.py``
(``../shared/docs/segnext-reference.md`` §4):

- 896×896 windows with overlap 384 (stride 512); starts ``0, stride, 2·stride, … < W``
  (x outer loop, y inner loop), a window that would cross the border pulled back to end at it;
- an image with a side shorter than the patch is padded at the bottom/right first (image 0,
  label 255);
- test images are copied whole.

Deliberate differences from mmseg: image patches are real PNGs (mmseg writes BMP bytes under
a ``.png`` name), duplicate windows are written once, and a side of exactly the patch size next
to a shorter one is padded too (mmseg's strict ``<``/``>`` tests skip that case and then slice
with a negative start).

``jseg`` follows the converter of the authors' Jittor port, JSeg
(``tools/convert_datasets/isaid.py`` of github.com/Jittor/JSeg, itself PFSegNet's
``tools/split_iSAID.py``; read at JSeg commit c14696d), whose patches the published iSAID
weights were trained and evaluated on:

- 800×800 windows, overlap 200 (stride 600): starts ``range(0, size, 600)``, x outer loop, a
  window past the edge pulled back to end at the edge; repeated windows are written once
  (JSeg writes them again under the same name);
- an image is cut only when **both** sides exceed 800 (``img_H > 800 and img_W > 800``);
  otherwise it is copied whole, not padded, under its own name (``P0000.png``, mask
  ``P0000_instance_color_RGB.png``);
- P1527 and P1530 are skipped (in every split, as JSeg does);
- test images are cut like the others (JSeg cuts ``test/images`` too).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .isaid import ISAID_PALETTE, ISAID_SPLITS, MASK_SUFFIX
from .isaid_raw import RawFile, scan_raw_split
from .palette import IGNORE_INDEX, rgb_to_ids, save_palette_png

__all__ = [
    "PROTOCOLS",
    "CutProtocol",
    "PrepareReport",
    "jseg_windows",
    "patch_windows",
    "prepare_isaid",
]


@dataclass(frozen=True)
class CutProtocol:
    """How raw scenes become patches.

    ``pad_small``: pad sides shorter than ``patch`` and cut (mmseg), else copy an image
    whole unless both sides exceed ``patch`` (JSeg). ``cut_test``: cut test images too
    (JSeg) rather than copy them whole (mmseg). ``skip``: image ids left out.
    """

    name: str
    patch: int
    overlap: int
    pad_small: bool
    cut_test: bool
    skip: tuple[str, ...] = ()

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """``(y0, y1, x0, x1)`` windows of an image of ``height`` × ``width`` px (see the module docstring)."""
        if self.pad_small:
            return patch_windows(height, width, self.patch, self.overlap)
        return jseg_windows(height, width, self.patch, self.overlap)


PROTOCOLS: dict[str, CutProtocol] = {
    "mmseg": CutProtocol("mmseg", 896, 384, pad_small=True, cut_test=False),
    "jseg": CutProtocol("jseg", 800, 200, pad_small=False, cut_test=True, skip=("P1527", "P1530")),
}


def _check_options(patch: int, overlap: int) -> None:
    if patch <= 0 or overlap < 0 or overlap >= patch:
        raise UserError(f"--overlap {overlap}: must be >= 0 and smaller than --patch-size {patch}")


def _sliding(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows starting every ``stride`` px (x outer, y inner), pulled back to the edge, first-seen order."""
    out: dict[tuple[int, int, int, int], None] = {}
    for x in range(0, width, stride):
        for y in range(0, height, stride):
            x0, y0 = min(x, width - patch), min(y, height - patch)
            out[(y0, y0 + patch, x0, x0 + patch)] = None
    return list(out)


def patch_windows(height: int, width: int, patch: int = 896, overlap: int = 384) -> list[tuple[int, int, int, int]]:
    """Patch windows ``(y0, y1, x0, x1)`` (pixels, end exclusive) over an image, as the mmseg converter cuts them.

    ``height``/``width`` are the image size before padding; a side shorter than
    ``patch`` is padded to ``patch`` first. Windows start every ``patch - overlap``
    pixels (x outer, y inner loop); the last one is pulled back to end at the edge.
    Duplicates (which mmseg writes twice) are kept once, in first-seen order.
    """
    _check_options(patch, overlap)
    return _sliding(max(height, patch), max(width, patch), patch, patch - overlap)


def jseg_windows(height: int, width: int, patch: int = 800, overlap: int = 200) -> list[tuple[int, int, int, int]]:
    """Patch windows as JSeg's converter cuts them: only when both sides exceed ``patch``, else the whole image.

    The whole image is one window ``(0, height, 0, width)`` (copied, not padded).
    Otherwise windows start at ``range(0, size, patch - overlap)`` (x outer, y inner),
    the last pulled back to end at the edge, repeats kept once.
    """
    _check_options(patch, overlap)
    if not (height > patch and width > patch):
        return [(0, height, 0, width)]
    return _sliding(height, width, patch, patch - overlap)


def _pad(a: np.ndarray, patch: int, value: int) -> np.ndarray:
    """Pad bottom/right so that both sides are at least ``patch`` (as ``mmcv.impad``)."""
    h, w = a.shape[:2]
    ph, pw = max(patch - h, 0), max(patch - w, 0)
    if ph == 0 and pw == 0:
        return a
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, widths, mode="constant", constant_values=value)


def _patch_name(name: str, win: tuple[int, int, int, int], whole: bool) -> str:
    if whole:
        return name
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


def _copy_bytes(source: RawFile, target: Path) -> None:
    data = source.read_bytes()
    if not data:
        raise UserError(f"{source.label}: empty file")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _convert(job: _Job, out_dir: Path, protocol: CutProtocol) -> _JobResult:
    """Cut one raw image (and its mask) into patches; skip it when every patch already exists."""
    img_dir = out_dir / "img_dir" / job.split
    name = job.image.name
    if job.mask is None and not protocol.cut_test:  # mmseg's test split: the whole image is copied
        target = img_dir / f"{name}.png"
        if target.exists() and target.stat().st_size > 0:
            return _JobResult(job.split, name, 1, True)
        _copy_bytes(job.image, target)
        return _JobResult(job.split, name, 1, False)

    ann_dir = out_dir / "ann_dir" / job.split
    width, height = job.image.open().size
    windows = protocol.windows(height, width)
    whole = windows == [(0, height, 0, width)] and not protocol.pad_small  # JSeg copies small images whole
    stems = [_patch_name(name, w, whole) for w in windows]
    targets = [(img_dir / f"{s}.png", ann_dir / f"{s}{MASK_SUFFIX}.png" if job.mask else None) for s in stems]
    if all(a.exists() and (b is None or b.exists()) for a, b in targets):
        return _JobResult(job.split, name, len(windows), True)

    image = None if whole else job.image.rgb()
    ids = None
    unknown_pixels, colours = 0, {}
    if job.mask is not None:
        mask_rgb = job.mask.rgb()
        if mask_rgb.shape[:2] != (height, width):
            raise UserError(
                f"{job.mask.label}: mask is {mask_rgb.shape[1]}x{mask_rgb.shape[0]} px "
                f"but image {job.image.label} is {width}x{height} px"
            )
        mapped = rgb_to_ids(mask_rgb, ISAID_PALETTE, fill=0)
        del mask_rgb
        ids = _pad(mapped.ids, protocol.patch, IGNORE_INDEX) if protocol.pad_small else mapped.ids
        unknown_pixels = mapped.unknown_pixels
        colours = dict(sorted(mapped.unknown_colours.items(), key=lambda kv: -kv[1])[:5])
    if image is not None and protocol.pad_small:
        image = _pad(image, protocol.patch, 0)
    for (y0, y1, x0, x1), (img_path, ann_path) in zip(windows, targets, strict=True):
        if image is None:
            _copy_bytes(job.image, img_path)  # JSeg: copyfile of the source image
        else:
            _save_png(Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1])), img_path)
        if ids is not None and ann_path is not None:
            save_palette_png(np.ascontiguousarray(ids[y0:y1, x0:x1]), ISAID_PALETTE, ann_path)
    return _JobResult(
        job.split,
        name,
        len(windows),
        False,
        unknown_pixels,
        {",".join(map(str, c)): n for c, n in colours.items()},
    )


@dataclass
class PrepareReport:
    """What :func:`prepare_isaid` did, per split: images converted, skipped (already done) and patches."""

    out_dir: str
    protocol: str
    patch_size: int
    overlap: int
    converted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    patches: dict[str, int] = field(default_factory=dict)
    #: image ids the protocol leaves out (JSeg: P1527, P1530), as ``split/id``
    left_out: list[str] = field(default_factory=list)
    unknown_pixels: int = 0
    #: image id -> {"pixels": n, "colours": {"r,g,b": n}} for masks with colours outside the palette
    unknown_masks: dict[str, dict[str, object]] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI."""
        lines = [f"protocol: {self.protocol} ({self.patch_size}x{self.patch_size} px, overlap {self.overlap})"]
        for split in self.patches:
            lines.append(
                f"{split:5s}: {self.converted.get(split, 0)} images converted, "
                f"{self.skipped.get(split, 0)} already done, {self.patches[split]} patches"
            )
        if self.left_out:
            lines.append(f"left out as the {self.protocol} protocol does: {', '.join(self.left_out)}")
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
    patch_size: int | None = None,
    overlap: int | None = None,
    splits: tuple[str, ...] = ISAID_SPLITS,
    workers: int = 1,
    progress: bool = True,
    protocol: str = "mmseg",
) -> PrepareReport:
    """Convert raw iSAID (folders or zips) into mmseg-style patches under ``out_dir``.

    ``protocol`` is ``mmseg`` (896/384, padded) or ``jseg`` (800/200, as the authors'
    Jittor port; see the module docstring); ``patch_size``/``overlap`` override its
    sizes. Splits missing from ``raw_dir`` are skipped (at least one must exist). A
    second run skips images whose patches all exist, so an interrupted run can
    simply be started again. Writes ``out_dir/prepare_isaid.json`` with the report.
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol}: must be one of {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[protocol]
    cut = CutProtocol(
        base.name,
        base.patch if patch_size is None else int(patch_size),
        base.overlap if overlap is None else int(overlap),
        base.pad_small,
        base.cut_test,
        base.skip,
    )
    _check_options(cut.patch, cut.overlap)
    raw = Path(raw_dir)
    out = Path(out_dir)
    if not raw.is_dir():
        raise UserError(f"{raw}: raw iSAID folder not found")
    present = [s for s in splits if (raw / s).is_dir()]
    if not present:
        raise UserError(f"{raw}: no {'/'.join(splits)} folder (expected {raw}/train/images, {raw}/val/images, ...)")
    jobs: list[_Job] = []
    left_out: list[str] = []
    for split in present:
        rs = scan_raw_split(raw, split)
        (out / "img_dir" / split).mkdir(parents=True, exist_ok=True)
        if split != "test":
            (out / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
        for name, f in rs.images.items():
            if name in cut.skip:
                left_out.append(f"{split}/{name}")
            else:
                jobs.append(_Job(split, f, rs.masks.get(name)))

    report = PrepareReport(str(out), cut.name, cut.patch, cut.overlap, left_out=left_out)
    for split in present:
        report.converted[split] = report.skipped[split] = report.patches[split] = 0
    for r in _run_jobs(jobs, out, cut, workers, progress):
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


def _run_jobs(jobs: list[_Job], out: Path, protocol: CutProtocol, workers: int, progress: bool) -> list[_JobResult]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="prepare-isaid", unit="image", disable=not progress)
    results: list[_JobResult] = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(_convert(job, out, protocol))
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_convert, job, out, protocol) for job in jobs]
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
