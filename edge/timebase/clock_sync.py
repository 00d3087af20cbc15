"""Whether this box's system clock is disciplined (NTP, or PTP that tells the kernel), from adjtimex(2).

The rig's sensors are stamped with CLOCK_REALTIME, and a recording started by the time server on
several boxes only lines up if every box's clock follows one reference. The kernel knows whether a
time daemon (chrony, ntpd, systemd-timesyncd, ptp4l with phc2sys -r ...) keeps it in step: the
`maxerror` it maintains stays below 16 s only while a daemon updates it. That is what `timedatectl`
shows as "System clock synchronized" (systemd's ntp_synced). The STA_UNSYNC bit is not asked: chrony
keeps it set on a synchronised clock unless `rtcsync` is on, so that the kernel leaves the RTC alone.
Reading them needs no privileges (adjtimex with no mode bits only reads) and no package, so the
self-test can ask on any Linux box.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

#: Time status bit: the clock is not synchronised to a reference.
STA_UNSYNC = 0x0040
#: adjtimex's return value when the clock is not synchronised.
TIME_ERROR = 5
#: The kernel's cap on `maxerror` (NTP_PHASE_LIMIT, microseconds): at or above it, no daemon has
#: updated the clock for hours, or ever since boot.
MAX_ERROR_UNSYNC_US = 16_000_000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux, glibc and musl alike)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockSync:
    synchronised: bool
    #: The kernel's bound on the clock's error (it grows while no daemon updates it), seconds.
    max_error_s: float
    #: The daemon's estimate of the clock's error, seconds.
    est_error_s: float

    def describe(self) -> str:
        state = "synchronised" if self.synchronised else "NOT synchronised"
        error, bound = _duration(self.est_error_s), _duration(self.max_error_s)
        return f"system clock {state} (estimated error {error}, bound {bound})"


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1.0 else f"{seconds * 1e3:.3g} ms"


def _libc_adjtimex() -> Callable[[ctypes._Pointer[Timex]], int] | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.adjtimex  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def read_clock_sync(adjtimex: Callable[..., int] | None = None) -> ClockSync | None:
    """The kernel's view of the system clock's synchronisation; None where it cannot be asked (not
    Linux, or the call is refused, as some sandboxes do)."""
    call = adjtimex if adjtimex is not None else _libc_adjtimex()
    if call is None:
        return None
    timex = Timex()  # modes = 0: read only
    state = call(ctypes.byref(timex))
    if state < 0:
        return None
    # As timedatectl: a synchronised chrony without rtcsync keeps STA_UNSYNC (and TIME_ERROR) on.
    synchronised = timex.maxerror < MAX_ERROR_UNSYNC_US
    return ClockSync(synchronised, max(0, timex.maxerror) / 1e6, max(0, timex.esterror) / 1e6)


def unsynchronised_warning() -> str | None:
    """Why a start on this box's wall clock may not line up with the other boxes', else None.

    Each box sleeps until the time server's instant on its *own* CLOCK_REALTIME: a box whose clock
    no daemon keeps in step starts (and records) a different stretch of real time under the same
    session id, and nothing in the start protocol can tell (it only refuses targets more than 50 ms
    in the past or an hour ahead). None where the kernel cannot be asked: no warning on a guess.
    """
    sync = read_clock_sync()
    if sync is None or sync.synchronised:
        return None
    return (
        f"{sync.describe()}: this box starts at the time server's instant on its own clock, so what it "
        "records will not line up with the other boxes of the session; enable NTP (chrony or "
        "systemd-timesyncd) or PTP (ptp4l with phc2sys -r)"
    )


__all__ = ["ClockSync", "read_clock_sync", "unsynchronised_warning"]
