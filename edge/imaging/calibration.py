"""Per-channel front-end correction: undo each Tx/Rx path's complex gain and extra delay.

Every virtual channel runs through its own switch ports, cables and antennas, so each one measures
S21 * g_c * exp(-j 2 pi f tau_c). Back-projection adds channels coherently; uncorrected, those
random phases and "time zeros" defocus the image into noise. The on-site wizard measures (g, tau)
per channel; this module stores them and divides them out:

    S21_corrected(c, f) = S21(c, f) / (g_c * exp(-j 2 pi f tau_c))

File format (JSON, versioned so that an old runtime refuses a newer file instead of misreading it)::

    {"format": "vrclip-channel-calibration", "version": 1, "channels": 144,
     "gain_re": [...], "gain_im": [...], "delay_s": [...]}

The wizard's calibration file may embed that object under the key "radar_channels"; `load`
accepts either form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.errors import ConfigError
from vrclip.edge.imaging.drift import CouplingReference
from vrclip.edge.textfiles import MAX_CALIBRATION_BYTES, read_text_capped
from vrclip.edge.values import finite_number

FORMAT = "vrclip-channel-calibration"
VERSION = 1
#: Key under which a combined calibration file (the wizard's) may hold the channel table.
EMBED_KEY = "radar_channels"
#: A delay beyond this is not a cable but a broken measurement (1 us is 300 m of cable).
MAX_DELAY_S = 1e-6
#: A gain this small would amplify noise by more than 120 dB when divided out.
MIN_GAIN = 1e-6


@dataclass(frozen=True)
class ChannelCalibration:
    """Complex gain and extra delay of every virtual channel, in switching order."""

    #: (channels,) complex128 gain of each path.
    gain: np.ndarray
    #: (channels,) float64 extra delay of each path (s).
    delay_s: np.ndarray
    #: (start Hz, stop Hz, points) of the sweep it was measured with, when known. A delay is only
    #: measured modulo 1 / (frequency step), so on another sweep a long cable's delay can alias.
    sweep: tuple[float, float, int] | None = None
    #: Each channel's direct-coupling echo in the empty room when it was measured, so the running
    #: rig can tell how far its paths have drifted since (`vrclip.edge.imaging.drift`). Optional:
    #: files from before it, and hand-made ones, have none.
    coupling: CouplingReference | None = None

    def __post_init__(self) -> None:
        gain = np.asarray(self.gain, dtype=np.complex128).reshape(-1)
        delay = np.asarray(self.delay_s, dtype=np.float64).reshape(-1)
        if gain.size == 0 or gain.shape != delay.shape:
            raise ConfigError(
                f"channel calibration: gain has {gain.size} entries and delay_s {delay.size}; "
                "both need one entry per virtual channel"
            )
        bad = ~np.isfinite(gain) | (np.abs(gain) < MIN_GAIN)
        if bad.any():
            raise ConfigError(
                f"channel calibration: gain of channel {int(np.argmax(bad))} is {gain[bad][0]!r}; "
                f"every gain must be finite with magnitude >= {MIN_GAIN:g} (re-run the calibration wizard)"
            )
        bad = ~np.isfinite(delay) | (np.abs(delay) > MAX_DELAY_S)
        if bad.any():
            raise ConfigError(
                f"channel calibration: delay_s of channel {int(np.argmax(bad))} is {delay[bad][0]!r}; "
                f"every delay must be finite and within +-{MAX_DELAY_S:g} s (re-run the calibration wizard)"
            )
        object.__setattr__(self, "gain", gain)
        object.__setattr__(self, "delay_s", delay)

    @property
    def n_channels(self) -> int:
        return int(self.gain.size)

    @classmethod
    def identity(cls, n_channels: int) -> ChannelCalibration:
        """No correction: what an ideal front end (or an already-corrected recording) needs."""
        return cls(np.ones(n_channels, np.complex128), np.zeros(n_channels))

    @classmethod
    def from_front_end_errors(cls, errors: Any) -> ChannelCalibration:
        """The calibration a perfect wizard would measure on a simulated rig (`FrontEndErrors`).

        Takes any object with `.gain` and `.delay_s`, so the imaging package does not import the
        simulator.
        """
        return cls(np.asarray(errors.gain), np.asarray(errors.delay_s))

    def correction(self, freqs_hz: np.ndarray) -> np.ndarray:
        """(channels, points) complex64 factor 1 / (g exp(-j2 pi f tau)); multiply S21 by it.

        Computed once per sweep by `ChannelCorrector`, so a frame costs one multiply.
        """
        f = np.asarray(freqs_hz, dtype=np.float64)
        factor = np.exp(2j * np.pi * f[None, :] * self.delay_s[:, None]) / self.gain[:, None]
        return factor.astype(np.complex64)

    def apply(self, s21: np.ndarray, freqs_hz: np.ndarray) -> np.ndarray:
        """Corrected copy of one frame (channels, points); see `ChannelCorrector` for a hot loop."""
        _check_frame(s21, self.n_channels, len(freqs_hz))
        return (np.asarray(s21) * self.correction(freqs_hz)).astype(np.complex64)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "channels": self.n_channels,
            "gain_re": self.gain.real.tolist(),
            "gain_im": self.gain.imag.tolist(),
            "delay_s": self.delay_s.tolist(),
        }
        if self.sweep is not None:
            start, stop, points = self.sweep
            data["sweep"] = {"start_hz": start, "stop_hz": stop, "points": points}
        if self.coupling is not None:
            data["coupling_reference"] = self.coupling.to_dict()
        return data

    def sweep_mismatch(self, start_hz: float, stop_hz: float, points: int) -> str | None:
        """Why this calibration may not fit a sweep of start..stop in `points` (None if it does or
        its own sweep is not recorded)."""
        if self.sweep is None:
            return None
        start, stop, n = self.sweep
        if (
            n == points
            and math.isclose(start, start_hz, rel_tol=1e-9)
            and math.isclose(stop, stop_hz, rel_tol=1e-9)
        ):
            return None
        return (
            f"the channel calibration was measured on a sweep of {start / 1e9:g}-{stop / 1e9:g} GHz in "
            f"{n} points, but the radar sweeps {start_hz / 1e9:g}-{stop_hz / 1e9:g} GHz in {points}: "
            "delays are only known modulo one over the frequency step, so re-run `vrclip-calibrate "
            "channels` for this sweep"
        )

    @classmethod
    def from_dict(cls, data: Any, source: str = "<calibration>") -> ChannelCalibration:
        """Validate an untrusted mapping (a file someone may have edited by hand)."""
        if isinstance(data, dict) and EMBED_KEY in data and "format" not in data:
            data = data[EMBED_KEY]
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: not a channel calibration (expected a JSON object)")
        if data.get("format") != FORMAT:
            raise ConfigError(
                f"{source}: format = {data.get('format')!r}, expected {FORMAT!r} "
                f"(or an object with a {EMBED_KEY!r} key holding one)"
            )
        version = data.get("version")
        if version != VERSION:
            raise ConfigError(
                f"{source}: version = {version!r}; this runtime reads version {VERSION} "
                "(upgrade vrclip-edge or re-run the calibration wizard)"
            )
        arrays = {}
        for key in ("gain_re", "gain_im", "delay_s"):
            values = data.get(key)
            if not (isinstance(values, list) and all(finite_number(v) for v in values)):
                raise ConfigError(f"{source}: {key} must be a list of numbers, one per virtual channel")
            arrays[key] = np.asarray(values, dtype=np.float64)
        channels = data.get("channels")
        if not (isinstance(channels, int) and all(a.size == channels for a in arrays.values())):
            sizes = {k: a.size for k, a in arrays.items()}
            raise ConfigError(f"{source}: channels = {channels!r} does not match the list lengths {sizes}")
        sweep = _sweep_of(data.get("sweep"), source)
        reference = data.get("coupling_reference")
        coupling = None if reference is None else CouplingReference.from_dict(reference, channels, source)
        try:
            return cls(arrays["gain_re"] + 1j * arrays["gain_im"], arrays["delay_s"], sweep, coupling)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a calibration."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, n_channels: int | None = None) -> ChannelCalibration:
        """Read and validate a calibration file; `n_channels` checks it fits the array in use."""
        path = Path(path)
        try:
            text = read_text_capped(path, MAX_CALIBRATION_BYTES)
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: no channel calibration file; measure it with `vrclip-calibrate channels "
                f"--reflector X Y Z --out {path}` (JSON, format {FORMAT!r}: gain_re, gain_im, delay_s "
                "per virtual channel) or set paths.calibration_file"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read channel calibration: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        calibration = cls.from_dict(data, source=str(path))
        if n_channels is not None and calibration.n_channels != n_channels:
            raise ConfigError(
                f"{path}: holds {calibration.n_channels} channels but the array has {n_channels}; "
                "re-run the calibration wizard for this array"
            )
        return calibration


class ChannelCorrector:
    """A calibration bound to one sweep: the correction table is computed once, applied per frame."""

    def __init__(self, calibration: ChannelCalibration, freqs_hz: np.ndarray) -> None:
        self.calibration = calibration
        self.n_points = len(freqs_hz)
        self._factor = calibration.correction(freqs_hz)

    def __call__(self, s21: np.ndarray) -> np.ndarray:
        _check_frame(s21, self.calibration.n_channels, self.n_points)
        return np.multiply(s21, self._factor, dtype=np.complex64)


def _check_frame(s21: np.ndarray, n_channels: int, n_points: int) -> None:
    shape = np.shape(s21)
    if shape != (n_channels, n_points):
        raise ValueError(f"radar frame has shape {shape}; the calibration expects ({n_channels}, {n_points})")


def _sweep_of(value: object, source: str) -> tuple[float, float, int] | None:
    """The optional "sweep" entry: {"start_hz", "stop_hz", "points"}, validated."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: sweep must be an object with start_hz, stop_hz and points")
    start, stop, points = value.get("start_hz"), value.get("stop_hz"), value.get("points")
    if not (
        finite_number(start)
        and finite_number(stop)
        and 0 < float(start) < float(stop)  # type: ignore[arg-type]
        and isinstance(points, int)
        and not isinstance(points, bool)
        and points >= 2
    ):
        raise ConfigError(
            f"{source}: sweep = {value!r}; expected start_hz < stop_hz (positive Hz) and points >= 2"
        )
    return float(start), float(stop), int(points)  # type: ignore[arg-type]
