"""Where the model runs: device resolution and the few device operations the pipeline needs.

The pipeline never calls ``torch.cuda`` itself. It asks a :class:`DeviceOps` object to

- ``scope()``: enter the device (every CUDA call of a run happens inside ``torch.cuda.device(dev)``);
- ``upload(images, role)``: stack host tiles into a batch on the device, ready for ``role``'s queue;
- ``hand_over(tensor, src, dst)``: let ``dst``'s queue use what ``src``'s queue produced;
- ``queue(role)``: run the enclosed work on ``role``'s queue (``compute``: the model; ``blend``:
  the stitcher's accumulators);
- ``download(tensors, role)``: start copying results to host memory; ``HostCopy.wait()`` blocks
  until they have landed (the writer thread calls it, never the main loop);
- ``bf16_native()`` / ``autocast(dtype)``: the chosen device's capability and mixed precision;
- ``forward_timer()``: time model forwards where they run.

:class:`CpuOps` is the CPU: one queue, everything synchronous, so every method is a real but
trivial operation. :class:`CudaOps` maps the roles onto CUDA streams of *one* device:

- ``compute``: the device's current stream; the model runs there.
- ``h2d``: a side stream for host-to-device copies from pinned, double-buffered host batches.
  The consumer's stream waits on an event recorded after the copy; a host buffer is reused
  only after the copy that last read it has finished (its event is waited on, two batches later).
- ``blend``: a second stream for blending, so the next batch's forward runs while this one's
  probabilities are accumulated.
- ``d2h``: a side stream for device-to-host copies into pinned buffers; it waits on an event
  recorded on the producing stream, and the copy's own event is what ``HostCopy.wait`` waits on.

Every stream is created for the chosen device and every event is recorded on one of those
streams, inside ``torch.cuda.device(dev)``, so nothing lands on device 0 by accident. CudaOps
reaches CUDA only through ``self.api`` (the ``torch.cuda`` module), which lets tests drive the
same code with a CPU simulator that checks device indices and call order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["CpuOps", "CudaOps", "DeviceOps", "ForwardTimer", "HostCopy", "Role", "make_ops", "resolve_device"]

Role = Literal["compute", "blend"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda:<current>`` when CUDA is available, else ``cpu``; ``cuda`` -> ``cuda:<current>``.

    CUDA devices always come back with an explicit index, so later calls never fall back to
    "the current device".

    Raises:
        UserError: unknown device string or a CUDA device that does not exist (names ``--device``).
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        d = device.strip().lower()
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise UserError(f"--device: unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: unsupported device {str(device)!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device: {str(device)!r} requested but CUDA is not available on this machine")
        n = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= n:
            raise UserError(f"--device: {str(device)!r} does not exist ({n} CUDA device(s))")
    return dev


@dataclass
class HostCopy:
    """Tensors on their way to host memory; :meth:`wait` returns once they have landed."""

    tensors: list[Tensor | None]
    _wait: Callable[[], None] = field(default=lambda: None)

    def wait(self) -> list[Tensor | None]:
        self._wait()
        return self.tensors


class ForwardTimer:
    """Seconds and calls of model forwards, measured where they run (see :meth:`DeviceOps.forward_timer`)."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0
        self._seconds = 0.0

    def add(self, seconds: float, images: int) -> None:
        self.calls += 1
        self.images += images
        self._seconds += seconds

    @property
    def seconds(self) -> float:
        return self._seconds

    def reset(self) -> None:
        self.calls = self.images = 0
        self._seconds = 0.0

    @contextmanager
    def time(self, images: int) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.add(time.perf_counter() - t, images)


class DeviceOps:
    """Device operations of one device; this base class is the CPU implementation (see the module docstring).

    ``device``: where model and accumulators live. ``tensor_device`` is the same device (a test
    simulator may keep tensors on the CPU while it checks CUDA semantics).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tensor_device = device

    @property
    def asynchronous(self) -> bool:
        """Whether results arrive after the calls that asked for them return (CUDA)."""
        return False

    def scope(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def bf16_native(self) -> bool:
        if self.device.type == "cpu":
            try:
                return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):
                return False
        return False

    def fp16_native(self) -> bool:
        if self.device.type == "cpu":
            try:
                return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
            except (AttributeError, RuntimeError):
                return False
        return False

    def autocast(self, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.tensor_device.type, dtype=dtype)

    def upload(self, images: Sequence[Tensor], role: Role = "compute") -> Tensor:
        """``n`` host ``(C, H, W)`` tensors -> one ``(n, C, H, W)`` batch on the device."""
        batch = images[0][None] if len(images) == 1 else torch.stack(list(images))
        return batch.to(self.tensor_device)

    def upload_tensor(self, host: Tensor, role: Role = "blend") -> Tensor:
        """One host tensor -> the device (for partial sums read back from the spill folder)."""
        return host.to(self.tensor_device)

    def hand_over(self, tensor: Tensor, src: Role, dst: Role) -> None:
        """Make ``tensor`` (written on ``src``'s queue) safe to use on ``dst``'s queue."""

    def queue(self, role: Role) -> AbstractContextManager[Any]:
        return nullcontext()

    def download(self, tensors: Sequence[Tensor | None], role: Role = "blend") -> HostCopy:
        """Start copying ``tensors`` (``None`` passes through) to host memory."""
        return HostCopy([None if t is None else t.to("cpu") for t in tensors])

    def forward_timer(self, timer: ForwardTimer, images: int) -> AbstractContextManager[Any]:
        """Time one forward of ``images`` images into ``timer``."""
        return timer.time(images)

    def total_memory(self) -> int | None:
        """Bytes of device memory separate from the host's (``None``: the host's own memory)."""
        return None

    def collect(self, timer: ForwardTimer) -> None:
        """Add forward times still pending on the device to ``timer`` (CPU: none are)."""

    def synchronize(self) -> None:
        """Wait for all queued work (benchmarks only)."""


class CpuOps(DeviceOps):
    """The CPU (and any device without streams, e.g. ``mps``): one queue, synchronous calls."""


class _Buffers:
    """Pinned host batches for uploads, two per shape, reused once their last copy has finished."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._slots: dict[tuple[tuple[int, ...], torch.dtype], list[tuple[Tensor, Any]]] = {}
        self._turn: dict[tuple[tuple[int, ...], torch.dtype], int] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, int]:
        key = (shape, dtype)
        slots = self._slots.setdefault(key, [])
        turn = self._turn.get(key, 0)
        self._turn[key] = (turn + 1) % 2
        if len(slots) <= turn:
            slots.append((torch.empty(shape, dtype=dtype, pin_memory=self.pin), None))
        buf, event = slots[turn]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer (two uploads ago) is done
        return buf, turn

    def used(self, shape: tuple[int, ...], dtype: torch.dtype, turn: int, event: Any) -> None:
        slots = self._slots[(shape, dtype)]
        slots[turn] = (slots[turn][0], event)


class CudaOps(DeviceOps):
    """One CUDA device: ``compute``, ``h2d``, ``blend`` and ``d2h`` streams of that device (module docstring).

    Args:
        device: ``cuda:N`` with an explicit index.
        api: the ``torch.cuda`` module (tests pass a simulator with the same functions).
        tensor_device: where tensors are allocated (default ``device``).
        pin_memory: pin host buffers (needs a CUDA runtime).
    """

    def __init__(
        self, device: torch.device, api: Any = None, tensor_device: torch.device | None = None, pin_memory: bool = True
    ) -> None:
        super().__init__(device)
        if device.type != "cuda" or device.index is None:
            raise ValueError(f"CudaOps needs a CUDA device with an index, not {device}")
        self.api = api if api is not None else torch.cuda
        self.index = int(device.index)
        self.tensor_device = tensor_device if tensor_device is not None else device
        self._buffers = _Buffers(pin_memory)
        self.pin_memory = pin_memory
        with self.api.device(self.index):
            self.streams: dict[str, Any] = {
                "compute": self.api.current_stream(self.index),
                "h2d": self.api.Stream(device=self.index),
                "blend": self.api.Stream(device=self.index),
                "d2h": self.api.Stream(device=self.index),
            }
        self._timings: list[tuple[Any, Any, int]] = []

    @property
    def asynchronous(self) -> bool:
        return True

    def scope(self) -> AbstractContextManager[Any]:
        return self.api.device(self.index)

    def total_memory(self) -> int | None:
        props = getattr(self.api, "get_device_properties", None)
        return int(props(self.index).total_memory) if props is not None else None

    def bf16_native(self) -> bool:
        """bf16 tensor cores on *this* device (compute capability >= 8.0), not on the current one."""
        return tuple(self.api.get_device_capability(self.index)) >= (8, 0)

    def fp16_native(self) -> bool:
        return tuple(self.api.get_device_capability(self.index)) >= (7, 0)

    def _event(self, stream: Any, timing: bool = False) -> Any:
        """A new event recorded on ``stream`` (a stream of this device), inside this device's context."""
        with self.api.device(self.index):
            event = self.api.Event(enable_timing=timing)
            event.record(stream)
        return event

    @staticmethod
    def _keep(tensor: Tensor, stream: Any) -> None:
        """Tell the caching allocator that ``stream`` uses ``tensor`` (no-op for host tensors)."""
        if tensor.is_cuda:
            tensor.record_stream(stream)

    def upload(self, images: Sequence[Tensor], role: Role = "compute") -> Tensor:
        first = images[0]
        shape = (len(images), *first.shape)
        host, turn = self._buffers.take(shape, first.dtype)
        torch.stack(list(images), out=host)
        dev = self._copy_in(host, role)
        self._buffers.used(shape, first.dtype, turn, self._last_copy)
        return dev

    def upload_tensor(self, host: Tensor, role: Role = "blend") -> Tensor:
        if self.pin_memory and not host.is_pinned():
            host = host.pin_memory()
        return self._copy_in(host, role)

    def _copy_in(self, host: Tensor, role: Role) -> Tensor:
        h2d, consumer = self.streams["h2d"], self.streams[role]
        with self.api.device(self.index), self.api.stream(h2d):
            dev = host.to(self.tensor_device, non_blocking=True)
        self._last_copy = self._event(h2d)
        consumer.wait_event(self._last_copy)
        self._keep(dev, consumer)
        return dev

    def hand_over(self, tensor: Tensor, src: Role, dst: Role) -> None:
        self.streams[dst].wait_event(self._event(self.streams[src]))
        self._keep(tensor, self.streams[dst])

    def queue(self, role: Role) -> AbstractContextManager[Any]:
        return _stream_context(self.api, self.index, self.streams[role])

    def download(self, tensors: Sequence[Tensor | None], role: Role = "blend") -> HostCopy:
        d2h = self.streams["d2h"]
        d2h.wait_event(self._event(self.streams[role]))  # the results are complete on role's stream
        hosts: list[Tensor | None] = []
        with self.api.device(self.index), self.api.stream(d2h):
            for t in tensors:
                if t is None:
                    hosts.append(None)
                    continue
                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin_memory)
                h.copy_(t, non_blocking=True)
                self._keep(t, d2h)
                hosts.append(h)
        done = self._event(d2h)
        return HostCopy(hosts, done.synchronize)

    @contextmanager
    def forward_timer(self, timer: ForwardTimer, images: int) -> Iterator[None]:
        """CUDA events around the forward on the compute stream; read back later, never waiting now."""
        start = self._event(self.streams["compute"], timing=True)
        yield
        end = self._event(self.streams["compute"], timing=True)
        self._timings.append((start, end, images))
        while self._timings and self._timings[0][1].query():  # finished pairs: reading them does not wait
            self._add_timing(timer)

    def _add_timing(self, timer: ForwardTimer) -> None:
        start, end, images = self._timings.pop(0)
        if not end.query():
            end.synchronize()
        timer.add(start.elapsed_time(end) / 1e3, images)

    def collect(self, timer: ForwardTimer) -> None:
        """Add every pending forward time to ``timer`` (waits for them: call after the run)."""
        while self._timings:
            self._add_timing(timer)

    def synchronize(self) -> None:
        self.api.synchronize(self.index)


@contextmanager
def _stream_context(api: Any, index: int, stream: Any) -> Iterator[None]:
    with api.device(index), api.stream(stream):
        yield


def make_ops(device: torch.device) -> DeviceOps:
    """The :class:`DeviceOps` of a resolved device."""
    if device.type == "cuda":
        return CudaOps(device)
    return CpuOps(device)
