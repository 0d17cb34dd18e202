"""The one inference runner: a model's eval forward, made fast, on one device.

:class:`InferenceRunner` is used by ``predict``, ``batch``, ``evaluate``, ``export`` and every
benchmark::

    runner = InferenceRunner(model, "cuda:1", precision="auto", compile="auto")
    logits = runner(x)                    # (N, C, H, W) normalised -> (N, K, H, W) float32 on the device
    probs = runner.probabilities(batch)   # softmax, averaged over the TTA transforms

What it does to a :class:`~segnext_geo.models.SegNeXt` (other modules run as they are):

- **Folding**: BatchNorm and layer scales folded into the convolutions (a copy; exact to rounding).
- **Fused kernels** (CPU, fp32): GELU, the attention sums and product and the MLP residual as
  oneDNN post-ops of the convolutions before them (:mod:`.kernels`).
- **channels_last** memory layout (faster convolutions with oneDNN and on tensor cores).
- **Precision**: ``auto`` is fp32 on the CPU (labels identical to the reference) and bf16 autocast
  on CUDA devices with native bf16 (fp16 on older GPUs); the NMF always runs in fp32 and the
  softmax in fp32. ``bf16``/``fp16`` on a CPU without native support warn once and run fp32.
- **compile**: ``on`` compiles with inductor: on the CPU with ``freezing`` (weights prepacked,
  convolutions fused with their element-wise neighbours), on CUDA with CUDA graphs for the fixed
  tile shape (the last batch is padded to the batch size). ``auto`` compiles when a run has
  enough forward pixels to repay the compile time (:meth:`InferenceRunner.plan`). A compile that
  fails (no C++ compiler, an unsupported op) warns once and runs eager.
- **Batching**: on CUDA a batch is one forward. On the CPU, and with ``deterministic=True``
  anywhere, images run one by one, so an image's output never depends on its batch (oneDNN and
  cuDNN pick batch-size-dependent kernels); ``deterministic`` also selects deterministic cuDNN
  algorithms. On 2 CPU cores image by image is also the faster way.

Forwards are timed where they run (``runner.timer``: CPU clock, or CUDA events on the compute
stream resolved later), so benchmarks measure exactly what ``predict`` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..models.fuse import fuse_for_inference
from ..models.meta import ModelMeta
from ..models.segnext import SegNeXt
from .device import DeviceOps, ForwardTimer, make_ops, resolve_device
from .kernels import fuse_cpu_kernels, onednn_available
from .tta import TTAMode, tta_transforms

__all__ = ["COMPILE_AUTO_MPIX", "CompileMode", "InferenceRunner", "Precision"]

log = logging.getLogger("segnext_geo.inference")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
CompileMode = Literal["off", "auto", "on"]

#: ``compile="auto"`` compiles when a run's forward pixels (tiles x tile area x TTA passes, in
#: megapixels) reach this, per device type. CPU: derived in ``benchmarks/model_speed.py --compile``
#: from the measured compile time (cold inductor cache) and per-megapixel gain over the eager
#: fused-kernel path (README, "Performance"). CUDA: CUDA graphs and inductor pay off after a few
#: hundred 1024^2 tiles.
COMPILE_AUTO_MPIX: dict[str, float] = {"cpu": 400.0, "cuda": 256.0}

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _softmax_(logits: Tensor) -> Tensor:
    """Softmax over dim 1 of ``(N, K, H, W)``, in place (no second full-size buffer)."""
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


class InferenceRunner:
    """Eval forwards of one model on one device (see the module docstring).

    Args:
        model: a :class:`~segnext_geo.models.SegNeXt` (folded, fused and compiled as described) or
            any eval module mapping ``(N, C, H, W)`` to logits ``(N, K, H, W)`` (moved to the device).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | a ``torch.device``.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (autocast; NMF and softmax in fp32).
        channels_last: NHWC layout for SegNeXt (and for any model on CUDA).
        compile: ``off`` | ``auto`` | ``on``.
        deterministic: image-by-image forwards and deterministic cuDNN: outputs independent of
            the batch size on every device.
        tta: ``none`` | ``flip`` | ``d4``: :meth:`probabilities` averages over the transforms.
        num_classes: K (default: the model's metadata); the model's output is checked against it.
        ops: the device operations (default: :func:`~.device.make_ops` of ``device``).
        fuse_kernels: use the fused oneDNN kernels on the CPU in fp32 (off for ONNX export,
            which traces plain PyTorch ops).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        *,
        precision: Precision = "auto",
        channels_last: bool = True,
        compile: CompileMode = "off",
        deterministic: bool = False,
        tta: TTAMode = "none",
        num_classes: int | None = None,
        ops: DeviceOps | None = None,
        fuse_kernels: bool = True,
    ) -> None:
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"--precision: {precision!r} is not one of auto, fp32, bf16, fp16")
        if compile not in ("off", "auto", "on"):
            raise UserError(f"--compile: {compile!r} is not one of off, auto, on")
        self.ops = ops if ops is not None else make_ops(resolve_device(device))
        self.device = self.ops.device
        self.cuda = self.device.type == "cuda"
        meta = getattr(model, "meta", None)
        self.meta: ModelMeta | None = meta if isinstance(meta, ModelMeta) else None
        self.segnext = isinstance(model, SegNeXt)
        k = num_classes if num_classes is not None else (self.meta.num_classes if self.meta else None)
        self.num_classes: int | None = int(k) if k is not None else None
        self.tta: TTAMode = tta
        self.transforms = tta_transforms(tta)
        self.deterministic = bool(deterministic)
        self.per_image = self.deterministic or not self.cuda
        self.precision: str = self._resolve_precision(precision)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.channels_last = bool(channels_last) and (self.segnext or self.cuda)
        self.fuse_kernels = bool(fuse_kernels)
        self.timer = ForwardTimer()
        #: the model as given (its weights are what ``model_sha256`` hashes)
        self.source_model = model
        with self.ops.scope():
            self.model = self._prepare(model, kernels=True)
        self.kernels = self.segnext and self._use_kernels()
        self.compile_mode: CompileMode = compile
        self.compiled = False
        self._fn: Callable[[Tensor], Tensor] = self.model
        self._fixed_batch = 0
        if compile == "on":
            self._compile()

    # ---- set-up ----

    def _resolve_precision(self, precision: str) -> str:
        if precision == "auto":
            if self.cuda:
                return "bf16" if self.ops.bf16_native() else "fp16"
            return "fp32"
        if precision == "bf16" and not self.ops.bf16_native():
            _warn_once(
                f"bf16-{self.device}",
                f"--precision bf16: {self.device} has no native bf16 (it would be emulated, many times slower); "
                "running fp32",
            )
            return "fp32"
        if precision == "fp16" and not self.ops.fp16_native():
            _warn_once(f"fp16-{self.device}", f"--precision fp16: {self.device} has no native fp16; running fp32")
            return "fp32"
        return precision

    def _use_kernels(self) -> bool:
        cpu_fp32 = self.device.type == "cpu" and self.precision == "fp32"
        return self.fuse_kernels and cpu_fp32 and onednn_available()

    def _prepare(self, model: nn.Module, kernels: bool) -> nn.Module:
        net = model.eval()
        if self.segnext:
            assert isinstance(model, SegNeXt)
            net = fuse_for_inference(model)
            net.batch_invariant = False  # batching is the runner's business (per_image)
            if kernels and self._use_kernels():
                net = fuse_cpu_kernels(net)
        net = net.to(self.ops.tensor_device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def plan(self, tiles: int, tile_shape: tuple[int, int]) -> bool:
        """Decide ``compile="auto"`` for a run of ``tiles`` forwards of ``tile_shape``; returns whether compiled.

        Compiles when ``tiles x height x width x TTA passes`` reaches :data:`COMPILE_AUTO_MPIX`
        of the device type (inductor's on-disk cache makes later runs' compiles cheaper still).
        """
        if self.compile_mode == "auto" and not self.compiled:
            mpix = tiles * tile_shape[0] * tile_shape[1] * len(self.transforms) / 1e6
            if mpix >= COMPILE_AUTO_MPIX.get(self.device.type, float("inf")):
                self._compile()
        return self.compiled

    def _compile(self) -> None:
        """Wrap the model in ``torch.compile`` (lazily compiled at the first forward)."""
        target = self._prepare(self.source_model, kernels=False) if self.kernels else self.model
        if self.cuda:
            self._fn = torch.compile(target, mode="reduce-overhead", dynamic=False)
        else:
            self._fn = torch.compile(target, dynamic=False)
        self._compiled_target = target
        self.compiled = True

    def _compile_context(self) -> AbstractContextManager[Any]:
        if self.compiled and not self.cuda:
            import torch._inductor.config as inductor_config

            return inductor_config.patch(freezing=True)
        return nullcontext()

    def _backend_flags(self) -> AbstractContextManager[Any]:
        if not self.cuda:
            return nullcontext()
        # deterministic cuDNN algorithms when asked; fp32 means fp32 (no TF32 convolutions)
        return torch.backends.cudnn.flags(
            enabled=True,
            benchmark=not self.deterministic,
            deterministic=self.deterministic,
            allow_tf32=self.precision != "fp32",
        )

    # ---- forwards ----

    def _planar_forward(self, x: Tensor) -> Tensor:
        """The eager SegNeXt forward with its final upsampling done on one plane per class: the small
        stride-8 logits are made contiguous first, so the full-size logits come out contiguous
        (no transposing copy of ``K x H x W`` floats after the softmax; ~2x faster with it)."""
        assert isinstance(self.model, SegNeXt)
        low = self.model.forward_logits_stride8(x).contiguous()
        return F.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False)

    def _call(self, x: Tensor, planar: bool = False) -> Tensor:
        """One model call on ``x`` ``(n, C, H, W)`` (device, layout set) -> raw logits.

        ``planar``: the logits are wanted as contiguous class planes (:meth:`probabilities`).
        """
        n = x.shape[0]
        pad = 0
        if self.compiled and self.cuda and not self.per_image:  # CUDA graphs: one fixed batch shape
            self._fixed_batch = max(self._fixed_batch, n)
            pad = self._fixed_batch - n
            if pad:
                x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        with ExitStack() as stack:
            stack.enter_context(self._backend_flags())
            stack.enter_context(self._compile_context())
            stack.enter_context(self.ops.forward_timer(self.timer, n))
            stack.enter_context(self.ops.autocast(self.amp_dtype))
            try:
                logits = self._planar_forward(x) if planar and self.segnext and not self.compiled else self._fn(x)
            except Exception as e:
                if not self.compiled or not _is_compile_error(e):
                    raise
                _warn_once("compile", f"--compile: torch.compile failed ({type(e).__name__}); running eager")
                self._fn, self.compiled = self.model, False
                logits = self.model(x)
        if pad:
            logits = logits[:n]
        if (self.compiled and self.cuda) or logits.dtype != torch.float32:
            logits = logits.float() if logits.dtype != torch.float32 else logits.clone()  # graph outputs are reused
        return logits

    def _check(self, logits: Tensor, x: Tensor) -> None:
        if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
            raise UserError(
                f"--checkpoint: the model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
                "expected (N, K, H, W) logits"
            )
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise UserError(
                f"--checkpoint: the model returned {logits.shape[1]} classes but its metadata names {self.num_classes}"
            )

    def _logits(self, x: Tensor, planar: bool = False) -> Tensor:
        """Float32 logits of a device batch ``(n, C, H, W)``, image by image when ``per_image``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.per_image and x.shape[0] > 1:
            out = torch.cat([self._call(x[i : i + 1], planar) for i in range(x.shape[0])])
        else:
            out = self._call(x, planar)
        self._check(out, x)
        return out

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` float on any device -> float32 logits ``(N, K, H, W)`` on the device (no TTA)."""
        with self.ops.scope():
            return self._logits(x.to(self.ops.tensor_device))

    @torch.inference_mode()
    def probabilities(self, x: Tensor) -> Tensor:
        """Softmax of a device batch ``(n, C, H, W)`` averaged over the TTA transforms: ``(n, K, H, W)``
        float32, contiguous (one plane per class, as the stitcher's accumulators are laid out)."""
        out: Tensor | None = None
        for fwd, inv in self.transforms:
            p = inv(_softmax_(self._logits(fwd(x), planar=True)))
            out = p.contiguous() if out is None else out.add_(p)  # contiguous: a no-op unless compiled
        assert out is not None
        if len(self.transforms) > 1:
            out.div_(len(self.transforms))
        return out

    @torch.inference_mode()
    def run(self, images: Sequence[Tensor]) -> Iterator[Tensor]:
        """Host ``(C, H, W)`` tiles -> their ``(K, H, W)`` probabilities on the device, in order.

        Call inside ``runner.ops.scope()``. Per-image runners upload and run one image at a
        time (no batch is stacked); batched runners upload the batch once (pinned, on the copy
        stream) and run one forward.
        """
        if not images:
            return
        if self.per_image:
            for image in images:
                yield self.probabilities(self.ops.upload([image], "compute"))[0]
        else:
            yield from self.probabilities(self.ops.upload(images, "compute"))

    def weight_bytes(self) -> int:
        """Bytes of the weights held: the model as given and the runner's folded copy."""
        tensors = [*self.source_model.parameters(), *self.source_model.buffers()]
        size = sum(t.numel() * t.element_size() for t in tensors)
        return size * (2 if self.model is not self.source_model else 1)

    def forward_seconds(self) -> float:
        """Seconds spent in model forwards so far (collects pending CUDA timings)."""
        self.ops.collect(self.timer)
        return self.timer.seconds

    def describe(self) -> dict[str, object]:
        """How this runner runs (recorded in output metadata)."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "compiled": self.compiled,
            "kernels": "onednn-fused" if self.kernels else "none",
            "deterministic": self.deterministic,
            "tta": self.tta,
        }


def _is_compile_error(e: Exception) -> bool:
    """Errors raised by dynamo/inductor while compiling (not by the model itself)."""
    module = type(e).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or "CompilationError" in type(e).__name__
