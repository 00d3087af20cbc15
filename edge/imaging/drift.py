"""Has the radar's channel calibration drifted since it was measured? Read off the running rig.

The calibration wizard measures each channel's gain and delay once; cables warm and cool, connectors
are bumped, and over months the paths move. A channel whose phase has moved blurs the image without
any error anywhere. Every channel carries a reference that needs no reflector: the direct coupling
from its Tx antenna to its Rx antenna, a strong echo a few ns out that passes through the same
cables and switch paths as every other echo. The wizard records each channel's coupling (its delay
and complex value) in the empty room beside the calibration (`CouplingReference`); the runtime
follows the same value in every raw frame, averaged over seconds so that people walking by (metres
further out) do not move it (`DriftMonitor`). The ratio of the two per channel is the path's drift
since calibration. A drift common to all channels (the VNA's source, its reference plane) does no
harm to the image, so what is reported is how coherent the channels still are with each other:
|mean over channels of exp(j (phase drift))|, 1 when nothing moved, falling as the phases spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from vrclip.edge.config import SPEED_OF_LIGHT
from vrclip.edge.errors import ConfigError
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.values import finite_number

#: The coupling is looked for this far (s) around where it must be: the calibration's cable delay of
#: the channel plus its antennas' separation over c.
SEARCH_HALF_WIDTH_S = 1.5e-9
#: Longest delay a reference may hold (s): cables of tens of metres.
MAX_COUPLING_DELAY_S = 500e-9
#: Smallest coupling a reference may hold (linear, -240 dB): far below any VNA's noise floor, and
#: large enough that dividing by it cannot overflow to a NaN coherence.
MIN_COUPLING_VALUE = 1e-12
#: Zero padding of the delay search (a grid of ~30 ps at 201 points and 10 MHz steps).
SEARCH_PAD = 16
#: Weight of the newest frame in the running mean of the coupling (10 frames/s: ~5 s).
DRIFT_ALPHA = 0.02
#: Frames before the running mean says anything.
MIN_FRAMES = 50
#: Below this coherence the image has lost enough focus to recalibrate (a 26-degree RMS phase spread).
MIN_COHERENCE = 0.9
#: A channel whose coupling fell this much more than the median channel's has a path that weakened.
WEAK_DROP_DB = 6.0


def _taper(points: int) -> np.ndarray:
    """The Hann taper over a sweep's points, without its two zero ends (every point counts)."""
    return np.hanning(points + 2)[1:-1]


def _steering(freqs_hz: np.ndarray, delays_s: np.ndarray) -> np.ndarray:
    """(channels, points) weights that take each channel's sweep to the echo at its own delay: the
    inverse DFT at one point, Hann-tapered so that the much stronger walls and people a few ns later
    do not leak in through the sidelobes."""
    f = np.asarray(freqs_hz, np.float64)
    taper = _taper(f.size)
    steer = np.exp(2j * np.pi * f[None, :] * np.asarray(delays_s, np.float64)[:, None]) * taper[None, :]
    return steer / taper.sum()


def coupling_values(s21: np.ndarray, freqs_hz: np.ndarray, delays_s: np.ndarray) -> np.ndarray:
    """(channels,) complex: the echo each channel's sweep holds at that channel's delay."""
    return (np.asarray(s21) * _steering(freqs_hz, delays_s)).sum(axis=1)


@dataclass(frozen=True)
class CouplingReference:
    """Each channel's direct-coupling echo in the empty room, at calibration time."""

    delay_s: np.ndarray
    value: np.ndarray

    @property
    def n_channels(self) -> int:
        return int(self.delay_s.size)

    @classmethod
    def measure(
        cls, empty: np.ndarray, freqs_hz: np.ndarray, expected_delay_s: np.ndarray
    ) -> CouplingReference:
        """From the empty room's mean frame (channels, points): each channel's strongest echo within
        SEARCH_HALF_WIDTH_S of `expected_delay_s` (its cable delay plus its antennas' separation over
        c), found on a zero-padded, tapered profile."""
        x = np.asarray(empty, np.complex128)
        f = np.asarray(freqs_hz, np.float64)
        step = float(f[1] - f[0])
        n = SEARCH_PAD * x.shape[1]
        taper = _taper(x.shape[1])
        # |sum_f x(f) exp(+j 2 pi f tau)| over tau = |ifft|: the start frequency only turns the phase.
        profile = np.abs(np.fft.ifft(x * taper[None, :], n=n, axis=1))
        grid = np.arange(n) / (n * step)
        unambiguous = 1.0 / step
        expected = np.mod(np.asarray(expected_delay_s, np.float64), unambiguous)
        distance = np.abs(
            (grid[None, :] - expected[:, None] + unambiguous / 2) % unambiguous - unambiguous / 2
        )
        masked = np.where(distance <= SEARCH_HALF_WIDTH_S, profile, -1.0)
        found = grid[np.argmax(masked, axis=1)]
        # The sweep cannot tell `found` from found + k / step: keep the one next to the expected delay.
        # A delay found just below zero (modulo the unambiguous range) otherwise read as nearly that
        # range, over MAX_COUPLING_DELAY_S once a sweep has more than ~1001 points over 2 GHz, and the
        # wizard wrote a calibration file that then failed to load.
        raw = np.asarray(expected_delay_s, np.float64)
        delay_s = raw + ((found - raw + unambiguous / 2) % unambiguous - unambiguous / 2)
        return cls(delay_s, coupling_values(x, f, delay_s))

    @classmethod
    def of_rig(
        cls, empty: np.ndarray, freqs_hz: np.ndarray, geometry: ArrayGeometry, cable_delay_s: np.ndarray
    ) -> CouplingReference:
        """`measure`, searching each channel where its coupling must be: its cable delay (what the
        calibration measured) plus its antennas' separation over c."""
        expected = np.asarray(cable_delay_s, np.float64) + geometry.direct_path_lengths() / SPEED_OF_LIGHT
        return cls.measure(empty, freqs_hz, expected)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delay_s": self.delay_s.tolist(),
            "value_re": self.value.real.tolist(),
            "value_im": self.value.imag.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Any, n_channels: int, source: str) -> CouplingReference:
        """Validate an untrusted mapping: one finite delay in range and one non-zero value per channel."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: coupling_reference must be an object")
        arrays = {}
        for key in ("delay_s", "value_re", "value_im"):
            values = data.get(key)
            if not (
                isinstance(values, list)
                and len(values) == n_channels
                and all(finite_number(v) for v in values)
            ):
                raise ConfigError(
                    f"{source}: coupling_reference.{key} must be {n_channels} finite numbers, one per channel"
                )
            arrays[key] = np.asarray(values, np.float64)
        # Either sign: a channel's cable delay is fitted relative to the others and may be negative.
        if np.any(np.abs(arrays["delay_s"]) > MAX_COUPLING_DELAY_S):
            raise ConfigError(
                f"{source}: coupling_reference.delay_s outside "
                f"-{MAX_COUPLING_DELAY_S:g}..{MAX_COUPLING_DELAY_S:g} s"
            )
        value = arrays["value_re"] + 1j * arrays["value_im"]
        if np.any(value == 0):
            raise ConfigError(f"{source}: coupling_reference has a zero value; re-run the calibration wizard")
        if np.any(~(np.abs(value) >= MIN_COUPLING_VALUE)) or not np.all(np.isfinite(np.abs(value))):
            raise ConfigError(
                f"{source}: coupling_reference has a value too small or too large "
                f"(|value| must be {MIN_COUPLING_VALUE:g} or more, and finite); re-run the calibration wizard"
            )
        return cls(arrays["delay_s"], value)


@dataclass(frozen=True)
class Drift:
    """The rig's coupling against its reference, over the running mean."""

    frames: int
    #: |mean exp(j phase drift)| over channels: 1 = every path as at calibration (up to a common turn).
    coherence: float
    #: Each channel's phase drift with the common part removed, RMS over channels (degrees).
    phase_spread_deg: float
    #: Median level change of the coupling (dB): the rig as a whole louder or quieter.
    level_db: float
    #: Channels whose coupling fell WEAK_DROP_DB more than the median's.
    weak_channels: tuple[int, ...]

    @property
    def drifted(self) -> bool:
        return self.coherence < MIN_COHERENCE

    def summary(self) -> dict[str, float | int]:
        return {
            "frames": self.frames,
            "coherence": round(self.coherence, 4),
            "phase_spread_deg": round(self.phase_spread_deg, 2),
            "level_db": round(self.level_db, 2),
            "weak_channels": len(self.weak_channels),
        }


class DriftMonitor:
    """Follows the coupling of every raw radar frame (one multiply-add per sample) against the
    calibration's reference."""

    def __init__(
        self, reference: CouplingReference, freqs_hz: np.ndarray, alpha: float = DRIFT_ALPHA
    ) -> None:
        self.reference = reference
        self._steer = _steering(freqs_hz, reference.delay_s).astype(np.complex64)
        self.alpha = alpha
        self._mean: np.ndarray | None = None
        self.frames = 0

    def update(self, s21: np.ndarray) -> None:
        values = np.einsum("cp,cp->c", np.asarray(s21, np.complex64), self._steer)
        if not np.all(np.isfinite(values)):
            return
        self._mean = values if self._mean is None else (1 - self.alpha) * self._mean + self.alpha * values
        self.frames += 1

    def drift(self) -> Drift | None:
        """None until MIN_FRAMES frames have come."""
        if self._mean is None or self.frames < MIN_FRAMES:
            return None
        ratio = self._mean.astype(np.complex128) / self.reference.value
        unit = ratio / np.maximum(np.abs(ratio), 1e-30)
        common = np.mean(unit)
        coherence = float(np.abs(common))
        residual = np.angle(unit * np.conj(common / max(coherence, 1e-30)))
        level = 20.0 * np.log10(np.maximum(np.abs(ratio), 1e-30))
        median = float(np.median(level))
        weak = tuple(int(c) for c in np.flatnonzero(level < median - WEAK_DROP_DB))
        spread = float(np.degrees(np.sqrt(np.mean(residual**2))))
        return Drift(self.frames, coherence, spread, median, weak)


__all__ = ["CouplingReference", "Drift", "DriftMonitor", "coupling_values"]
