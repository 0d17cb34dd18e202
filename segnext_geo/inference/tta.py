"""Test-time augmentation: flips and the dihedral group D4, averaged in probability space.

Each transform is a pair ``(forward, inverse)`` acting on the last two dims of an
``(N, C, H, W)`` tensor; ``inverse(forward(x)) == x``. Rotations swap H and W, which the
model handles like any other input size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = ["TTAMode", "tta_transforms"]

TTAMode = Literal["none", "flip", "d4"]
Transform = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def _identity(x: Tensor) -> Tensor:
    return x


def _hflip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=(-1,))


def _vflip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=(-2,))


def _rot(k: int, flip: bool) -> Transform:
    def fwd(x: Tensor) -> Tensor:
        return torch.rot90(_hflip(x) if flip else x, k, dims=(-2, -1))

    def inv(y: Tensor) -> Tensor:
        y = torch.rot90(y, -k, dims=(-2, -1))
        return _hflip(y) if flip else y

    return fwd, inv


def tta_transforms(mode: TTAMode) -> list[Transform]:
    """``none``: identity; ``flip``: identity, horizontal and vertical flips (3 passes); ``d4``: 8 passes."""
    if mode == "none":
        return [(_identity, _identity)]
    if mode == "flip":
        return [(_identity, _identity), (_hflip, _hflip), (_vflip, _vflip)]
    if mode == "d4":
        return [_rot(k, flip) for flip in (False, True) for k in range(4)]
    raise ValueError(f"--tta: {mode!r} is not one of none, flip, d4")
