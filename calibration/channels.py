"""Measure each radar channel's complex gain and extra delay from one reflector at a known place.

Every virtual channel c measures S21_c(f) = s_c(f) * g_c * exp(-j 2 pi f tau_c): the scene's
response times its own path's gain and delay (switch ports, cables, antennas). Two measurements
isolate one point target: the empty room, then the room with a corner reflector at a surveyed
position p. Their difference holds the reflector alone (static clutter and Tx->Rx coupling cancel),
whose ideal response the geometry gives exactly:

    ideal_c(f) = exp(-j 2 pi f (|p - tx_c| + |p - rx_c|) / c0) / (|p - tx_c| |p - rx_c|)

so r_c(f) = difference / ideal = a * g_c * exp(-j 2 pi f tau_c), with a the reflector's unknown
strength. tau_c is the slope of r_c's phase over frequency (a coarse FFT peak, then a linear fit of
what is left, so phase wrapping never matters), g_c the mean of r_c with that delay removed. The
common factor a is divided out by scaling the gains to a mean magnitude of 1: imaging needs the
channels equalised, not an absolute level.

The fit is only as good as the surveyed position: a reflector 1 cm off shifts every channel's delay
by up to 67 ps, which the fit cannot tell from cable delay. `coherence` (how much of the ideal
coherent sum the corrected channels reach at the reflector) and the per-channel SNR and residual say
whether the measurement itself was clean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from vrclip.edge.config import SPEED_OF_LIGHT
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.calibration import ChannelCalibration

#: Zero padding of the coarse delay search: the FFT bin is 1 / (16 * bandwidth), a few ps.
DELAY_SEARCH_PAD = 16
#: Closer than this to the array's centre the reflector is no longer a point seen alike by every
#: antenna (it sits in the near field of the 1 m aperture, and shadows itself).
MIN_RANGE_M = 1.0
#: Farther than this the position was not given in metres (a survey in millimetres or centimetres
#: typed as is): the fit would take the difference for cable delay, channel by channel, and still
#: report perfect focus, since it cannot check the position itself. The reflector stands 2-4 m away.
MAX_RANGE_M = 15.0
#: Quality gates of `check_quality`.
MIN_MEDIAN_SNR_DB = 15.0
SUSPECT_SNR_DB = 10.0
SUSPECT_RESIDUAL = 0.3
MAX_SUSPECT_FRACTION = 0.1


@dataclass(frozen=True)
class Averaged:
    """The mean of N frames (channels, points) and each channel's noise variance of that mean."""

    mean: np.ndarray
    noise_var: np.ndarray
    frames: int


@dataclass(frozen=True)
class ChannelFit:
    calibration: ChannelCalibration
    #: (channels,) reflector power over the noise of the two averaged measurements, dB.
    snr_db: np.ndarray
    #: (channels,) relative misfit of the gain-and-delay model, |r - fit| / |r|.
    residual: np.ndarray
    #: |sum of the corrected channels at the reflector| / (sum of their magnitudes): 1 is perfect focus.
    coherence: float
    #: The same for the raw channels: how defocused the rig is without this calibration.
    coherence_uncalibrated: float

    def suspect_channels(self) -> list[int]:
        """Channels whose measurement should not be trusted (weak echo or a misfit)."""
        bad = (self.snr_db < SUSPECT_SNR_DB) | (self.residual > SUSPECT_RESIDUAL)
        return [int(c) for c in np.flatnonzero(bad)]


def average_frames(
    read: Callable[[], np.ndarray], frames: int, tick: Callable[[], None] | None = None
) -> Averaged:
    """Average `frames` radar frames from `read()`; the spread between them gives the noise."""
    if frames < 2:
        raise UserError(
            f"--frames {frames}: average at least 2 frames (the spread between them is the noise)"
        )
    stack = []
    for _ in range(frames):
        s21 = np.asarray(read())
        if stack and s21.shape != stack[0].shape:
            raise UserError(
                f"the radar changed its frame shape mid-measurement ({stack[0].shape} -> {s21.shape})"
            )
        if not np.all(np.isfinite(s21)):
            raise UserError("the radar returned a frame holding NaN or infinity; check the VNA and try again")
        stack.append(s21.astype(np.complex128))
        if tick is not None:
            tick()
    data = np.stack(stack)
    mean = data.mean(axis=0)
    spread = np.abs(data - mean) ** 2
    noise_var = spread.sum(axis=0).mean(axis=-1) / (frames - 1) / frames
    return Averaged(mean, noise_var, frames)


def reflector_response(geometry: ArrayGeometry, freqs_hz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(channels, points) ideal response of a unit point reflector at `position` (room metres)."""
    point = np.asarray(position, dtype=np.float64).reshape(1, 3)
    d_tx = np.linalg.norm(point - geometry.channel_tx, axis=-1)
    d_rx = np.linalg.norm(point - geometry.channel_rx, axis=-1)
    distance = float(np.linalg.norm(point[0] - geometry.virtual_positions.mean(axis=0)))
    if not distance <= MAX_RANGE_M:  # NaN and infinity fail too
        raise UserError(
            f"--reflector {' '.join(f'{v:g}' for v in point[0])}: {distance:g} m from the array's centre; "
            f"give the reflector's position in metres, room coordinates, within {MAX_RANGE_M:g} m of the "
            "array (2-4 m in front of it is best)"
        )
    if distance < MIN_RANGE_M:
        raise UserError(
            f"the reflector at {tuple(map(float, point[0]))} m is {distance:.2f} m from the array's centre; "
            f"put it at least {MIN_RANGE_M:g} m in front of the array (2-4 m is best)"
        )
    path = d_tx + d_rx
    phase = (2.0 * np.pi / SPEED_OF_LIGHT) * path[:, None] * np.asarray(freqs_hz, np.float64)[None, :]
    return np.exp(-1j * phase) / (d_tx * d_rx)[:, None]


def _fit_delay(ratio: np.ndarray, freqs_hz: np.ndarray) -> np.ndarray:
    """(channels,) tau such that ratio ~ g exp(-j 2 pi f tau): FFT peak, then a phase-slope fit."""
    n_points = ratio.shape[1]
    step = float(freqs_hz[1] - freqs_hz[0])
    n_fft = DELAY_SEARCH_PAD * (1 << int(np.ceil(np.log2(n_points))))
    spectrum = np.abs(np.fft.fft(ratio, n_fft, axis=1))
    # exp(-j 2 pi m step tau) peaks at bin k with k / n_fft = -step * tau (mod 1).
    k = np.argmax(spectrum, axis=1).astype(np.float64)
    cycles = -k / n_fft
    cycles = (cycles + 0.5) % 1.0 - 0.5
    coarse = cycles / step
    rest = ratio * np.exp(2j * np.pi * freqs_hz[None, :] * coarse[:, None])
    phase = np.unwrap(np.angle(rest), axis=1)
    centred = freqs_hz - freqs_hz.mean()
    weights = np.abs(rest)
    slope = (weights * centred * (phase - phase.mean(axis=1, keepdims=True))).sum(axis=1) / np.maximum(
        (weights * centred**2).sum(axis=1), 1e-300
    )
    return coarse - slope / (2.0 * np.pi)


def _coherence(ratio: np.ndarray) -> float:
    return float(np.abs(ratio.sum()) / max(np.abs(ratio).sum(), 1e-300))


def fit_channels(
    background: Averaged,
    reflector: Averaged,
    geometry: ArrayGeometry,
    freqs_hz: np.ndarray,
    position: np.ndarray,
) -> ChannelFit:
    """The channel calibration from an empty-room and a reflector measurement (see the module doc)."""
    freqs = np.asarray(freqs_hz, np.float64)
    shape = (geometry.n_channels, freqs.size)
    for what, measured in (("empty-room", background), ("reflector", reflector)):
        if measured.mean.shape != shape:
            raise UserError(
                f"the {what} measurement is {measured.mean.shape}, the array and sweep need {shape}"
            )
    difference = reflector.mean - background.mean
    ratio = difference / reflector_response(geometry, freqs, position)
    delay = _fit_delay(ratio, freqs)
    aligned = ratio * np.exp(2j * np.pi * freqs[None, :] * delay[:, None])
    gain = aligned.mean(axis=1)
    model = gain[:, None] * np.exp(-2j * np.pi * freqs[None, :] * delay[:, None])
    residual = np.linalg.norm(ratio - model, axis=1) / np.maximum(np.linalg.norm(ratio, axis=1), 1e-300)
    signal = (np.abs(difference) ** 2).mean(axis=1)
    noise = np.maximum(background.noise_var + reflector.noise_var, 1e-300)
    snr_db = 10.0 * np.log10(np.maximum(signal / noise, 1e-30))
    scale = float(np.abs(gain).mean())
    if not scale > 0 or not np.all(np.isfinite(gain)) or not np.all(np.isfinite(delay)):
        raise UserError("the reflector measurement gave no usable signal; was the reflector in place?")
    calibration = ChannelCalibration(
        gain / scale, delay, (float(freqs[0]), float(freqs[-1]), int(freqs.size))
    )
    corrected = ratio * calibration.correction(freqs)
    return ChannelFit(calibration, snr_db, residual, _coherence(corrected), _coherence(ratio))


def check_quality(fit: ChannelFit) -> None:
    """Refuse a calibration that would make the images worse than none: UserError saying why."""
    median = float(np.median(fit.snr_db))
    if median < MIN_MEDIAN_SNR_DB:
        raise UserError(
            f"the reflector echo is only {median:.1f} dB over the noise (median over channels; "
            f"{MIN_MEDIAN_SNR_DB:g} dB needed): check that the reflector stands at the position given, "
            "faces the array, and that nothing moved in the room during either measurement"
        )
    suspect = fit.suspect_channels()
    if len(suspect) > MAX_SUSPECT_FRACTION * fit.calibration.n_channels:
        listed = ", ".join(map(str, suspect[:12])) + (" ..." if len(suspect) > 12 else "")
        raise UserError(
            f"{len(suspect)} of {fit.calibration.n_channels} channels measured badly (SNR under "
            f"{SUSPECT_SNR_DB:g} dB or a misfit over {SUSPECT_RESIDUAL:.0%}): channels {listed}; check their "
            "cables and switch ports, or something moving in the room, and measure again"
        )
