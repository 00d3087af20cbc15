"""Which radar channels measure a live path, from a few frames of whatever the room holds.

Every Tx/Rx pair of a working array sees a strong, steady signal even in an empty room: the direct
coupling between its two antennas and the echoes of walls and furniture. A path broken anywhere
(a cable, a connector, a relay of the switch matrix, an antenna) measures the VNA's noise floor
instead, tens of dB lower and different on every sweep. So two numbers per channel tell a dead path
from a live one without any reflector or survey, whoever walks in the room meanwhile:

- its level: the channel's power against the median channel's (a dead path sits 30-60 dB down);
- its structure: the share of its power in the strongest tenth of its range profile (the IFFT of the
  sweep). Echoes and coupling arrive at a few delays, so a live path puts most of its power there
  (0.77-0.93 on the simulated rig, people walking or not); noise spreads evenly over all delays,
  about 0.33 whatever its level. Frame-to-frame coherence, the obvious alternative, measured 0.11-0.3
  on live channels of the simulated rig while people walked: it tells motion, not health.

Failures that share a port point at that port's cable or switch path rather than at one antenna,
so `port_pattern` names them. A switch matrix that does not switch makes every channel measure the
same path: `duplicated_channels` finds channels whose sweeps are copies of one another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vrclip.edge.geometry import ArrayGeometry

#: A channel this far below the median channel, or with less structure than DEAD_STRUCTURE, measures
#: no path.
DEAD_LEVEL_DB = -20.0
DEAD_STRUCTURE = 0.5
#: Below these the path works but is suspect (a loose connector, a damaged cable).
WEAK_LEVEL_DB = -10.0
WEAK_STRUCTURE = 0.65
#: The strongest share of range bins whose power `structure` measures.
STRUCTURE_SHARE = 0.1
#: Two channels whose sweeps correlate this well measure the same path.
DUPLICATE_CORRELATION = 0.999


@dataclass(frozen=True)
class ChannelHealth:
    #: (channels,) mean power relative to the median channel, dB.
    level_db: np.ndarray
    #: (channels,) mean share of each sweep's power in its strongest tenth of range bins, 0..1.
    structure: np.ndarray

    @property
    def n_channels(self) -> int:
        return int(self.level_db.size)

    def dead(self) -> list[int]:
        """Channels that measure no path at all."""
        bad = (self.level_db < DEAD_LEVEL_DB) | (self.structure < DEAD_STRUCTURE)
        return [int(c) for c in np.flatnonzero(bad)]

    def suspect(self) -> list[int]:
        """Channels that measure a path, but a weak or unsteady one."""
        dead = set(self.dead())
        bad = (self.level_db < WEAK_LEVEL_DB) | (self.structure < WEAK_STRUCTURE)
        return [int(c) for c in np.flatnonzero(bad) if int(c) not in dead]


#: Fewest points a sweep needs for its range profile to show structure (a tenth of them is one bin).
MIN_POINTS = 10


def channel_health(frames: np.ndarray) -> ChannelHealth:
    """Health of every channel from `frames` (N >= 1, channels, points >= MIN_POINTS) complex sweeps
    of one rig."""
    x = np.asarray(frames)
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[2] < MIN_POINTS:
        raise ValueError(f"need (frames >= 1, channels, points >= {MIN_POINTS}) sweeps, got shape {x.shape}")
    x = x.astype(np.complex128)
    floor = np.finfo(np.float64).tiny
    power = np.mean(np.abs(x) ** 2, axis=(0, 2))
    median = float(np.median(power))
    level_db = 10.0 * np.log10(np.maximum(power, floor) / max(median, floor))
    profile = np.sort(np.abs(np.fft.ifft(x, axis=2)) ** 2, axis=2)
    strongest = max(1, round(STRUCTURE_SHARE * x.shape[2]))
    total = profile.sum(axis=2)
    share = np.where(total > floor, profile[:, :, -strongest:].sum(axis=2) / np.maximum(total, floor), 0.0)
    return ChannelHealth(level_db=level_db, structure=share.mean(axis=0))


def duplicated_channels(frame: np.ndarray) -> list[int]:
    """Channels of one frame (channels, points) whose sweep is a copy (|correlation| >= 0.999) of an
    earlier channel's: on a working array every pair sees its own geometry, so copies mean the switch
    did not move between sweeps."""
    x = np.asarray(frame).astype(np.complex128)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.maximum(norms, np.finfo(np.float64).tiny)[:, None]
    corr = np.abs(unit @ unit.conj().T)
    np.fill_diagonal(corr, 0.0)
    live = norms > 0
    copies = [c for c in range(x.shape[0]) if live[c] and np.any(corr[c, :c] >= DUPLICATE_CORRELATION)]
    return copies


def whole_ports(channels: list[int], geometry: ArrayGeometry) -> list[tuple[str, set[int]]]:
    """The ports all of whose channels are among `channels`, each as (its name, its channels): a
    shared cable or switch path, not one antenna. Named as the controller numbers them (0-based) and
    as the array labels them."""
    bad = set(channels)
    pairs = np.asarray(geometry.pairs).reshape(-1, 2)
    found = []
    for side, column, names in (("Tx", 0, geometry.tx_names), ("Rx", 1, geometry.rx_names)):
        for port in np.unique(pairs[:, column]):
            of_port = {int(c) for c in np.flatnonzero(pairs[:, column] == port)}
            if of_port and of_port <= bad:
                found.append((f"{side} port {int(port)} ({names[int(port)]})", of_port))
    return found


def port_pattern(channels: list[int], geometry: ArrayGeometry) -> list[str]:
    """The names of `whole_ports(channels, geometry)`."""
    return [name for name, _ in whole_ports(channels, geometry)]
