"""The array as data: 144 channels in a fixed switching order and correct bistatic delays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import SPEED_OF_LIGHT, ArrayConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.geometry import ArrayGeometry, load_geometry


def test_default_array_has_144_distinct_pairs_in_tx_major_order(geometry: ArrayGeometry) -> None:
    assert geometry.n_channels == 144
    assert len({tuple(p) for p in geometry.pairs}) == 144
    assert tuple(geometry.pairs[0]) == (0, 0) and tuple(geometry.pairs[1]) == (0, 1)
    assert tuple(geometry.pairs[12]) == (1, 0)
    assert geometry.channel_name(13) == "T2-R2"


def test_virtual_aperture_is_two_dimensional(geometry: ArrayGeometry) -> None:
    virtual = geometry.virtual_positions
    assert np.ptp(virtual[:, 0]) > 0.8 and np.ptp(virtual[:, 2]) > 0.8
    assert len({tuple(np.round(v, 4)) for v in virtual}) == 144


def test_bistatic_delay_matches_hand_computation(geometry: ArrayGeometry) -> None:
    target = np.array([0.7, 3.0, 1.1])
    c = 37
    tx, rx = geometry.channel_tx[c], geometry.channel_rx[c]
    expected = (np.linalg.norm(target - tx) + np.linalg.norm(target - rx)) / SPEED_OF_LIGHT
    assert geometry.bistatic_delays(target)[c] == pytest.approx(expected, rel=1e-12)
    grid = np.zeros((4, 5, 3)) + target
    assert geometry.path_lengths(grid).shape == (144, 4, 5)


def test_pose_moves_and_turns_the_array() -> None:
    base = load_geometry(ArrayConfig(position_m=(0.0, 0.0, 0.0)))
    moved = load_geometry(ArrayConfig(position_m=(1.0, 2.0, 0.5), yaw_deg=90.0))
    # yaw 90 deg about z: array-frame x maps to room +y
    expected = base.tx_positions @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]) + [1.0, 2.0, 0.5]
    np.testing.assert_allclose(moved.tx_positions, expected, atol=1e-12)


def test_dict_round_trip(geometry: ArrayGeometry) -> None:
    again = ArrayGeometry.from_dict(geometry.to_dict())
    np.testing.assert_array_equal(again.pairs, geometry.pairs)
    np.testing.assert_allclose(again.rx_positions, geometry.rx_positions)


def test_bad_geometry_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no built-in geometry called 'nope'"):
        load_geometry(ArrayConfig(geometry_file="builtin:nope"))
    path = tmp_path / "array.toml"
    path.write_text("[[tx]]\nposition_m = [0, 0]\n[[rx]]\nposition_m = [0, 0, 0]\n")
    with pytest.raises(ConfigError, match=r"tx\[0\].position_m"):
        load_geometry(ArrayConfig(geometry_file=str(path)))
    with pytest.raises(ConfigError, match="cannot read"):
        load_geometry(ArrayConfig(geometry_file=str(tmp_path / "missing.toml")))
    utf16 = tmp_path / "saved-by-notepad.toml"
    utf16.write_text("[[tx]]\nposition_m = [0, 0, 0]\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="not UTF-8 text") as e:
        load_geometry(ArrayConfig(geometry_file=str(utf16)))
    assert "saved-by-notepad.toml" in str(e.value)


def test_a_geometry_dict_from_a_file_is_checked_key_by_key(geometry: ArrayGeometry) -> None:
    """Recordings carry the geometry as JSON; from_dict must name what is wrong, not raise KeyError."""
    good = geometry.to_dict()
    bad = {
        "lacks 'tx_names'": {k: v for k, v in good.items() if k != "tx_names"},
        "'rx_positions_m' has shape": {**good, "rx_positions_m": [[0.0, 0.0]]},
        "not a finite number": {**good, "tx_positions_m": [[float("nan"), 0, 0]] * len(good["tx_names"])},
        "Tx index outside": {**good, "pairs": [[len(good["tx_names"]), 0]]},
        "non-empty list of \\[tx index": {**good, "pairs": [[0.5, 1]]},
        "list of antenna names": {**good, "tx_names": "T1"},
        "not a JSON object": [good],
    }
    for message, data in bad.items():
        with pytest.raises(ValueError, match=message):
            ArrayGeometry.from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (  # the same antenna pasted twice under [[tx]]
            '[[tx]]\nname = "T1"\nposition_m = [0, 0, 0]\n[[tx]]\nname = "T1"\nposition_m = [0.2, 0, 0]\n'
            '[[rx]]\nname = "R1"\nposition_m = [0.5, 0, 0]\n',
            r"tx\[0\] and tx\[1\] are both named 'T1'",
        ),
        (  # two Rx at one spot (a coordinate not edited after copying)
            '[[tx]]\nname = "T1"\nposition_m = [0, 0, 0]\n'
            '[[rx]]\nname = "R1"\nposition_m = [0.5, 0, 0]\n[[rx]]\nname = "R2"\nposition_m = [0.5, 0, 0]\n',
            r"rx\[0\] \(R1\) and rx\[1\] \(R2\) are both at \[0.5, 0.0, 0.0\]",
        ),
        (  # a Tx listed again as an Rx
            '[[tx]]\nname = "T1"\nposition_m = [0, 0, 0]\n[[tx]]\nname = "T2"\nposition_m = [0.2, 0, 0]\n'
            '[[rx]]\nname = "T2"\nposition_m = [0.2, 0, 0]\n',
            r"tx\[1\] \(T2\) and rx\[0\] \(T2\) are both at \[0.2, 0.0, 0.0\]",
        ),
        (  # TOML true is not a coordinate
            "[[tx]]\nposition_m = [true, 0, 0]\n[[rx]]\nposition_m = [0.5, 0, 0]\n",
            r"tx\[0\].position_m = \[True, 0, 0\]: must be three numbers",
        ),
    ],
)
def test_a_geometry_file_with_an_antenna_twice_is_refused(tmp_path: Path, body: str, message: str) -> None:
    """Every antenna is one physical element: two entries with one name or one position are a
    copy-paste slip that would image with the wrong geometry (and make the self-test blame the
    switch for two channels that measure one path), so the file is refused, naming both entries."""
    path = tmp_path / "array.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as e:
        load_geometry(ArrayConfig(geometry_file=str(path)))
    assert str(path) in str(e.value)
