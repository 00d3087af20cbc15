"""Fake `cupy.cuda`: streams, events, the device, `runtime.getDeviceProperties` (see the package doc).

Tests change the GPU the fake reports by editing `runtime.DEVICE_PROPERTIES` (e.g. another compute
capability, to exercise the "engine built for another GPU" refusal).
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

_handles = itertools.count(0x7F00_0000_1000, 0x100)


class CUDARuntimeError(RuntimeError):
    pass


def _get_device_properties(device: int) -> dict[str, Any]:
    if not 0 <= device < runtime.DEVICE_COUNT:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    return dict(runtime.DEVICE_PROPERTIES)


def _get_device_count() -> int:
    return runtime.DEVICE_COUNT


runtime = SimpleNamespace(
    DEVICE_COUNT=1,
    DEVICE_PROPERTIES={
        "name": b"NVIDIA Fake H100 80GB HBM3",
        "major": 9,
        "minor": 0,
        "totalGlobalMem": 80 << 30,
    },
    CUDARuntimeError=CUDARuntimeError,
    getDeviceProperties=_get_device_properties,
    getDeviceCount=_get_device_count,
)


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self.ptr = next(_handles)
        self.recorded = False

    def record(self, stream: Stream | None = None) -> None:
        self.recorded = True

    def synchronize(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return True


class Stream:
    """A stream handle; `with stream:` makes it the current stream, as in CuPy."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptr: int = 0) -> None:
        self.ptr = 0 if null else (ptr or next(_handles))
        self.non_blocking = non_blocking
        self.waited: list[Event] = []

    def synchronize(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return True

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"wait_event needs a cupy.cuda.Event, got {type(event).__name__}")
        self.waited.append(event)

    def __enter__(self) -> Stream:
        _current.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.pop()


_null = Stream(null=True)
_current: list[Stream] = []


def get_current_stream() -> Stream:
    return _current[-1] if _current else _null


class Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        _get_device_properties(self.id)

    @property
    def compute_capability(self) -> str:
        props = _get_device_properties(self.id)
        return f"{props['major']}{props['minor']}"

    def synchronize(self) -> None:
        pass

    def use(self) -> None:
        pass

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
