"""The raw iSAID layout: ``{split}/images`` and ``{split}/Semantic_masks``, as folders of PNGs or as
the original zip archives (``part1.zip`` …, ``images.zip``), read member by member.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .isaid import MASK_SUFFIX

__all__ = ["RawFile", "RawSplit", "scan_raw_split"]

_MASK_RE = re.compile(r"^(?P<name>[^_/]+)_instance_color_RGB\.png$", re.IGNORECASE)
_IMAGE_RE = re.compile(r"^(?P<name>[^_/]+)\.png$", re.IGNORECASE)


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
