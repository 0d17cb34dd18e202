"""A CPU simulator of the ``torch.cuda`` calls :class:`~segnext_geo.inference.device.CudaOps` makes.

It models what the multi-GPU defect was about: CUDA's *current device*. ``Event().record()``
without a stream records on the current stream of the current device; ``torch.cuda.device(i)``
and ``torch.cuda.stream(s)`` change the current device; a stream belongs to one device. Every
call is logged with the device index it touched and the calling thread, so tests can check that
a ``cuda:1`` run never touches device 0, and in which order copies, waits and events happen.
Tensors stay on the CPU (``CudaOps(tensor_device=cpu, pin_memory=False)``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


@dataclass(eq=False)
class SimStream:
    device: int
    id: int = field(default_factory=lambda: next(_ids))
    sim: Any = None

    def wait_event(self, event: SimEvent) -> None:
        self.sim.log("wait_event", self.device, stream=self.id, event=event.id, event_device=event.device)
        assert event.recorded, "waiting on an event that was never recorded"


@dataclass(eq=False)
class SimEvent:
    sim: Any
    enable_timing: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    device: int | None = None
    stream: int | None = None
    recorded: bool = False
    at: float = 0.0

    def record(self, stream: SimStream | None = None) -> None:
        s = stream if stream is not None else self.sim.current_stream()
        self.device, self.stream, self.recorded, self.at = s.device, s.id, True, time.perf_counter()
        self.sim.log("record", s.device, stream=s.id, event=self.id)

    def synchronize(self) -> None:
        self.sim.log("event_sync", self.device, event=self.id)

    def query(self) -> bool:
        """Whether the work before the event has finished (never waits); the simulator is always done."""
        self.sim.log("event_query", self.device, event=self.id)
        return self.recorded

    def elapsed_time(self, end: SimEvent) -> float:
        assert self.enable_timing and end.enable_timing
        return (end.at - self.at) * 1e3


class SimCuda:
    """``torch.cuda``-like module: ``device``, ``stream``, ``Stream``, ``Event``, ``current_stream``,
    ``get_device_capability``, ``synchronize``; ``capabilities`` maps device index -> (major, minor)."""

    def __init__(self, capabilities: dict[int, tuple[int, int]]) -> None:
        self.capabilities = capabilities
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._default = {i: SimStream(i, sim=self) for i in capabilities}

    # state: the current device and each device's current stream, per thread (as in CUDA)
    def _state(self) -> Any:
        st = self._local
        if not hasattr(st, "device"):
            st.device = 0
            st.streams = dict(self._default)
        return st

    def log(self, op: str, device: int | None, **kw: Any) -> None:
        with self._lock:
            self.calls.append({"op": op, "device": device, "thread": threading.current_thread().name, **kw})

    def current_device(self) -> int:
        return int(self._state().device)

    @contextmanager
    def device(self, index: int) -> Iterator[None]:
        st = self._state()
        before = st.device
        st.device = index
        self.log("device", index)
        try:
            yield
        finally:
            st.device = before

    @contextmanager
    def stream(self, s: SimStream) -> Iterator[None]:
        st = self._state()
        before_dev, before_stream = st.device, st.streams[s.device]
        st.device, st.streams[s.device] = s.device, s
        self.log("stream", s.device, stream=s.id)
        try:
            yield
        finally:
            st.device, st.streams[s.device] = before_dev, before_stream

    def current_stream(self, device: int | None = None) -> SimStream:
        st = self._state()
        return st.streams[st.device if device is None else device]  # type: ignore[no-any-return]

    def Stream(self, device: int | None = None) -> SimStream:  # torch.cuda's name
        d = self.current_device() if device is None else device
        s = SimStream(d, sim=self)
        self.log("new_stream", d, stream=s.id)
        return s

    def Event(self, enable_timing: bool = False) -> SimEvent:  # torch.cuda's name
        e = SimEvent(self, enable_timing)
        self.log("new_event", self.current_device(), event=e.id)
        return e

    def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
        d = self.current_device() if device is None else device
        self.log("capability", d)
        return self.capabilities[d]

    def synchronize(self, device: int | None = None) -> None:
        self.log("device_sync", self.current_device() if device is None else device)
