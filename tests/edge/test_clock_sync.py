"""The self-test's clock check reads the kernel's synchronisation state as timedatectl does."""

from __future__ import annotations

import ctypes
import sys

import pytest
from vrclip.edge.timebase.clock_sync import STA_UNSYNC, TIME_ERROR, Timex, read_clock_sync


def kernel(state: int, status: int, maxerror_us: int = 0, esterror_us: int = 0):  # type: ignore[no-untyped-def]
    """A stand-in for adjtimex(2) that reports the given state."""

    def adjtimex(pointer) -> int:  # type: ignore[no-untyped-def]
        timex = ctypes.cast(pointer, ctypes.POINTER(Timex)).contents
        assert timex.modes == 0  # a read: never adjust the clock
        timex.status, timex.maxerror, timex.esterror = status, maxerror_us, esterror_us
        return state

    return adjtimex


def test_a_disciplined_clock_is_synchronised_with_its_error_bounds() -> None:
    sync = read_clock_sync(kernel(0, 0x2001, maxerror_us=120_000, esterror_us=350))
    assert sync is not None and sync.synchronised
    assert sync.max_error_s == pytest.approx(0.12) and sync.est_error_s == pytest.approx(350e-6)
    assert sync.describe() == "system clock synchronised (estimated error 0.35 ms, bound 120 ms)"


@pytest.mark.parametrize(("state", "status"), [(TIME_ERROR, STA_UNSYNC), (TIME_ERROR, 0), (0, STA_UNSYNC)])
def test_a_free_running_clock_is_not(state: int, status: int) -> None:
    sync = read_clock_sync(kernel(state, status, maxerror_us=16_000_000))
    assert sync is not None and not sync.synchronised
    assert sync.describe() == "system clock NOT synchronised (estimated error 0 ms, bound 16 s)"


def test_a_refused_call_gives_no_answer() -> None:
    assert read_clock_sync(kernel(-1, 0)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_this_kernel_answers() -> None:
    sync = read_clock_sync()
    if sync is None:
        pytest.skip("this sandbox refuses adjtimex")
    assert sync.est_error_s >= 0.0
    assert 0.0 <= sync.max_error_s < 1e4


def test_a_synchronised_chrony_that_keeps_sta_unsync_set_is_synchronised() -> None:
    """chrony without `rtcsync` leaves STA_UNSYNC set (so the kernel does not write the RTC) on a
    clock it keeps within milliseconds; timedatectl says synchronised, and so must the self-test."""
    sync = read_clock_sync(kernel(TIME_ERROR, STA_UNSYNC | 0x2001, maxerror_us=48_000, esterror_us=200))
    assert sync is not None and sync.synchronised
