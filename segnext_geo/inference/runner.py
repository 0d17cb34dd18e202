"""Batched forward passes that return softmax probabilities, on CPU or CUDA.

A SegNeXt runs with BatchNorm and layer scales folded into its convs (``fuse_for_inference``,
exact to float rounding). On CPU it runs in fp32 and channels_last (about 1.4x faster than NCHW,
``benchmarks/model_speed.py``), image by image, so GroupNorm's batch-size-dependent channels_last
kernel never sees a batch; other models run as they are, in contiguous NCHW. bf16 would change
results on CPU and is not used there.

On CUDA the batch is copied from pinned memory with ``non_blocking=True``, the model runs in
channels_last under bf16 autocast (fp16 where bf16 is unsupported; SegNeXt's NMF forces fp32
itself), and the softmax is taken in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.fuse import fuse_for_inference
from ..models.optimize import resolve_device
from ..models.segnext import SegNeXt
from .tta import TTAMode, tta_transforms

__all__ = ["TileRunner", "pick_device"]


def pick_device(device: str | torch.device) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (or a ``torch.device``) -> ``torch.device``.

    Raises:
        UserError: unknown device or CUDA not available.
    """
    try:
        return resolve_device(device)
    except ValueError as e:
        raise UserError(str(e)) from None


def _softmax_(logits: Tensor) -> Tensor:
    """Softmax over dim 1 of ``(N, K, H, W)``, in place (no second full-size buffer, no page faults)."""
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


class TileRunner:
    """``runner(images)``: N normalised ``(C, H, W)`` float32 CPU tiles -> N ``(K, H, W)`` probabilities on ``device``.

    Args:
        model: any eval-mode module mapping ``(N, C, H, W)`` to logits ``(N, K, H, W)``; it is
            moved to ``device`` (and to channels_last on CUDA).
        num_classes: K, checked against the model's output.
        device: where the model runs.
        tta: ``none`` | ``flip`` | ``d4``; probabilities of the transformed passes are averaged.
    """

    def __init__(self, model: nn.Module, num_classes: int, device: torch.device, tta: TTAMode = "none") -> None:
        self.device = device
        self.num_classes = int(num_classes)
        self.transforms = tta_transforms(tta)
        self.cuda = device.type == "cuda"
        model = model.eval()
        self.channels_last = self.cuda
        if isinstance(model, SegNeXt):
            model = fuse_for_inference(model)
            self.channels_last = self.cuda or model.batch_invariant
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cuda:
            self.amp_dtype: torch.dtype | None = (
                torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
            )
        else:
            self.amp_dtype = None
        self.model = model
        self.per_image = not self.cuda and bool(getattr(model, "batch_invariant", False))

    def collate(self, images: list[Tensor]) -> Tensor:
        """Stack ``(C, H, W)`` tiles into a batch ``(N, C, H, W)`` (in pinned memory on CUDA)."""
        if not self.cuda:
            return torch.stack(images)
        out = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
        return torch.stack(images, out=out)

    def to_device(self, x: Tensor) -> Tensor:
        """Move a CPU batch to the device (pinned + non-blocking on CUDA)."""
        if not self.cuda:
            return x
        if not x.is_pinned():
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last)

    def _forward(self, x: Tensor) -> Tensor:
        ctx = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            logits = self.model(x)
        if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
            raise UserError(
                f"--checkpoint: the model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
                "expected (N, K, H, W) logits"
            )
        if logits.shape[1] != self.num_classes:
            raise UserError(
                f"--checkpoint: the model returned {logits.shape[1]} classes but its metadata names {self.num_classes}"
            )
        return _softmax_(logits.float())

    @torch.inference_mode()
    def _probabilities(self, x: Tensor) -> Tensor:
        """Softmax of the model (averaged over the TTA transforms): ``(n, C, H, W) -> (n, K, H, W)``."""
        out: Tensor | None = None
        for fwd, inv in self.transforms:
            p = inv(self._forward(fwd(x)))
            out = p if out is None else out.add_(p)
        assert out is not None
        if len(self.transforms) > 1:
            out.div_(len(self.transforms))
        return out

    def __call__(self, images: list[Tensor]) -> Iterator[Tensor]:
        """Yield the ``(K, H, W)`` float32 probabilities of each ``(C, H, W)`` image, in order.

        A model that runs batches image by image anyway (SegNeXt in eval on the CPU) is fed one
        image at a time, so only one image's logits exist at once and no batch is stacked; other
        models get the whole batch in one call.
        """
        if self.per_image:
            for image in images:
                yield self._probabilities(image[None])[0]
        else:
            yield from self._probabilities(self.to_device(self.collate(images)))
