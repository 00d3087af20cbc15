"""The 12T x 12R antenna array as data: element positions, the virtual-channel table and bistatic delays.

Positions live in a TOML geometry file (array frame) so that a rebuilt array is a new file, not new
code; the config places the array in the room (position and yaw). The virtual-channel table fixes
the switching order once, and every radar frame's channel axis follows it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from vrclip.edge.config import SPEED_OF_LIGHT, ArrayConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.textfiles import MAX_GEOMETRY_BYTES, read_text_capped

BUILTIN_PREFIX = "builtin:"
#: Two antennas closer than this (metres) are one position: no two real elements are a millimetre apart.
SAME_POSITION_M = 1e-3


@dataclass(frozen=True)
class ArrayGeometry:
    """Element positions in room coordinates and the order in which the switch visits Tx/Rx pairs."""

    name: str
    tx_names: tuple[str, ...]
    rx_names: tuple[str, ...]
    #: (n_tx, 3) float64 positions in room coordinates (metres).
    tx_positions: np.ndarray
    #: (n_rx, 3) float64 positions in room coordinates (metres).
    rx_positions: np.ndarray
    #: (channels, 2) int: (tx index, rx index) of each virtual channel, in switching order.
    pairs: np.ndarray

    @property
    def n_channels(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def channel_tx(self) -> np.ndarray:
        """(channels, 3) Tx position of every virtual channel."""
        return self.tx_positions[self.pairs[:, 0]]

    @property
    def channel_rx(self) -> np.ndarray:
        """(channels, 3) Rx position of every virtual channel."""
        return self.rx_positions[self.pairs[:, 1]]

    @property
    def virtual_positions(self) -> np.ndarray:
        """(channels, 3) Tx/Rx midpoints: the equivalent monostatic aperture."""
        return 0.5 * (self.channel_tx + self.channel_rx)

    @property
    def centre_xy(self) -> np.ndarray:
        """(2,) horizontal centre of the virtual aperture: where beams' range axes start."""
        return self.virtual_positions.mean(axis=0)[:2]

    def channel_name(self, channel: int) -> str:
        tx, rx = self.pairs[channel]
        return f"{self.tx_names[tx]}-{self.rx_names[rx]}"

    def path_lengths(self, points: np.ndarray) -> np.ndarray:
        """Bistatic path length |p - tx| + |p - rx| for every channel and point.

        points: (..., 3) metres. Returns (channels, ...) metres.
        """
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        d_tx = np.linalg.norm(flat[None, :, :] - self.channel_tx[:, None, :], axis=-1)
        d_rx = np.linalg.norm(flat[None, :, :] - self.channel_rx[:, None, :], axis=-1)
        return (d_tx + d_rx).reshape((self.n_channels, *pts.shape[:-1]))

    def bistatic_delays(self, points: np.ndarray) -> np.ndarray:
        """Propagation delay (s) Tx -> point -> Rx for every channel and point: (channels, ...)."""
        return self.path_lengths(points) / SPEED_OF_LIGHT

    def direct_path_lengths(self) -> np.ndarray:
        """(channels,) Tx-to-Rx distance: where antenna coupling shows up in the range profile."""
        return np.linalg.norm(self.channel_tx - self.channel_rx, axis=-1)

    def to_dict(self) -> dict:
        """JSON-friendly form stored in recordings, so a recording can be re-imaged without the file."""
        return {
            "name": self.name,
            "tx_names": list(self.tx_names),
            "rx_names": list(self.rx_names),
            "tx_positions_m": self.tx_positions.tolist(),
            "rx_positions_m": self.rx_positions.tolist(),
            "pairs": self.pairs.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ArrayGeometry:
        """The inverse of `to_dict`. Recordings carry this form, so it is checked as untrusted input:
        ValueError names the first key that is missing or malformed (callers add the file's name)."""
        if not isinstance(data, dict):
            raise ValueError(f"geometry is a {type(data).__name__}, not a JSON object")
        missing = [k for k in _GEOMETRY_KEYS if k not in data]
        if missing:
            raise ValueError(f"geometry lacks {', '.join(repr(k) for k in missing)}")
        tx_names, rx_names = _names(data["tx_names"], "tx_names"), _names(data["rx_names"], "rx_names")
        tx = _array(data["tx_positions_m"], "tx_positions_m", (len(tx_names), 3), np.float64)
        rx = _array(data["rx_positions_m"], "rx_positions_m", (len(rx_names), 3), np.float64)
        pairs = np.asarray(_array(data["pairs"], "pairs", (-1, 2), np.float64))
        if pairs.shape[0] == 0 or np.any(pairs != np.round(pairs)):
            raise ValueError("geometry 'pairs' must be a non-empty list of [tx index, rx index] integers")
        pairs = pairs.astype(np.int64)
        if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len(tx_names):
            raise ValueError(f"geometry 'pairs' has a Tx index outside 0..{len(tx_names) - 1}")
        if pairs[:, 1].min() < 0 or pairs[:, 1].max() >= len(rx_names):
            raise ValueError(f"geometry 'pairs' has an Rx index outside 0..{len(rx_names) - 1}")
        return cls(str(data["name"]), tx_names, rx_names, tx, rx, pairs)


_GEOMETRY_KEYS = ("name", "tx_names", "rx_names", "tx_positions_m", "rx_positions_m", "pairs")


def _names(value: object, key: str) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ValueError(f"geometry {key!r} must be a non-empty list of antenna names")
    return tuple(value)


def _array(value: object, key: str, shape: tuple[int, int], dtype: type) -> np.ndarray:
    """`value` as a finite `dtype` array of `shape` (-1: any length), or ValueError naming `key`."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"geometry {key!r} is not a list of numbers") from None
    rows, cols = shape
    if arr.ndim != 2 or arr.shape[1] != cols or (rows >= 0 and arr.shape[0] != rows):
        want = f"{'n' if rows < 0 else rows} x {cols}"
        raise ValueError(f"geometry {key!r} has shape {arr.shape}, expected {want}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"geometry {key!r} holds a value that is not a finite number")
    return arr


def _read_geometry_text(spec: str) -> tuple[str, str]:
    if spec.startswith(BUILTIN_PREFIX):
        name = spec.removeprefix(BUILTIN_PREFIX)
        resource = resources.files("vrclip.edge").joinpath("data", f"{name}.toml")
        if not resource.is_file():
            raise ConfigError(
                f"radar.array.geometry_file = {spec!r}: no built-in geometry called {name!r} "
                f"(built-in: builtin:array_12x12)"
            )
        return resource.read_text(encoding="utf-8"), spec
    path = Path(spec)
    try:
        return read_text_capped(path, MAX_GEOMETRY_BYTES), str(path)
    except OSError as exc:
        raise ConfigError(f"radar.array.geometry_file = {spec!r}: cannot read it ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"radar.array.geometry_file = {spec!r}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "save it as UTF-8 TOML"
        ) from None


def _positions(entries: object, kind: str, source: str) -> tuple[tuple[str, ...], np.ndarray]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: needs a non-empty [[{kind}]] list of antennas")
    names, positions = [], []
    for i, entry in enumerate(entries):
        pos = entry.get("position_m") if isinstance(entry, dict) else None
        # bool is an int to Python, but TOML `true` is no coordinate.
        if not (
            isinstance(pos, list)
            and len(pos) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pos)
        ):
            raise ConfigError(
                f"{source}: {kind}[{i}].position_m = {pos!r}: must be three numbers [x, y, z] in metres"
            )
        if not all(math.isfinite(v) and abs(v) < 10.0 for v in pos):
            raise ConfigError(
                f"{source}: {kind}[{i}].position_m = {pos!r}: each coordinate must lie in (-10, 10) m"
            )
        names.append(str(entry.get("name", f"{kind.upper()}{i + 1}")))
        positions.append(pos)
    return tuple(names), np.asarray(positions, dtype=np.float64)


def _check_distinct(
    tx: tuple[tuple[str, ...], np.ndarray], rx: tuple[tuple[str, ...], np.ndarray], source: str
) -> None:
    """Refuse an antenna entered twice: one name twice in a list, or two entries (Tx or Rx) at one
    position. Either is a copy-paste slip; imaged as it stands, a channel's echo is placed with
    another element's geometry, and the self-test blames the switch for channels that measure
    one path."""
    for kind, names in (("tx", tx[0]), ("rx", rx[0])):
        first: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in first:
                raise ConfigError(
                    f"{source}: {kind}[{first[name]}] and {kind}[{i}] are both named {name!r}: "
                    "each antenna is listed once, with its own name"
                )
            first[name] = i
    labels = [f"tx[{i}] ({n})" for i, n in enumerate(tx[0])] + [f"rx[{i}] ({n})" for i, n in enumerate(rx[0])]
    positions = np.concatenate([tx[1], rx[1]])
    apart = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    same = np.argwhere(np.triu(apart < SAME_POSITION_M, k=1))
    if same.size:
        a, b = (int(v) for v in same[0])
        raise ConfigError(
            f"{source}: {labels[a]} and {labels[b]} are both at {positions[a].tolist()} m: "
            "each antenna is listed once, at its own position"
        )


def _switching_pairs(order: str, n_tx: int, n_rx: int, source: str) -> np.ndarray:
    if order == "tx-major":
        return np.array([(t, r) for t in range(n_tx) for r in range(n_rx)], dtype=np.int64)
    if order == "rx-major":
        return np.array([(t, r) for r in range(n_rx) for t in range(n_tx)], dtype=np.int64)
    raise ConfigError(f"{source}: switch_order = {order!r}: must be 'tx-major' or 'rx-major'")


def _array_to_room(array: ArrayConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (yaw about z) and translation taking array-frame points into room coordinates."""
    yaw = math.radians(array.yaw_deg)
    c, s = math.cos(yaw), math.sin(yaw)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rotation, np.asarray(array.position_m, dtype=np.float64)


def load_geometry(array: ArrayConfig | None = None) -> ArrayGeometry:
    """Read the geometry file named by the config and place it in the room."""
    array = array or ArrayConfig()
    text, source = _read_geometry_text(array.geometry_file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    tx_names, tx = _positions(data.get("tx"), "tx", source)
    rx_names, rx = _positions(data.get("rx"), "rx", source)
    _check_distinct((tx_names, tx), (rx_names, rx), source)
    pairs = _switching_pairs(str(data.get("switch_order", "tx-major")), len(tx), len(rx), source)
    rotation, origin = _array_to_room(array)
    return ArrayGeometry(
        name=str(data.get("name", source)),
        tx_names=tx_names,
        rx_names=rx_names,
        tx_positions=tx @ rotation.T + origin,
        rx_positions=rx @ rotation.T + origin,
        pairs=pairs,
    )
