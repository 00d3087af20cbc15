"""Recordings a user hands to `train`, `evaluate` and `quantize` that are damaged in their values, not
their layout (the reader checks that): a DatasetError naming the file and the frame, before any
training step, instead of a traceback from deep inside training."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

import h5py
from vrclip.export.data import DatasetError, discover_sessions, preprocess_session
from vrclip.export.train import TrainConfig


def damaged_copy(dataset: Path, tmp_path: Path, edit: Callable[[h5py.File], None]) -> Path:
    """The dataset's first session, copied and edited in place."""
    session = discover_sessions(dataset)[0]
    copy = tmp_path / "damaged.h5"
    shutil.copy(session.path, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


def preprocess(dataset: Path, copy: Path) -> None:
    session = replace(discover_sessions(dataset)[0], path=copy, name=copy.name)
    spec = TrainConfig(dataset, copy.parent / "run", frames=4, channel_stride=4).prep_spec(144)
    preprocess_session(session, spec)


def test_nan_radar_samples_are_refused_naming_the_frame(small_dataset: Path, tmp_path: Path) -> None:
    """One NaN in one frame used to spread through the session's background into every RF window,
    and training died in the CCA's Cholesky factorisation (torch._LinAlgError) with no file named."""

    def poison(f: h5py.File) -> None:
        s21 = f["radar/s21"][7]
        s21[3, 5] = complex(np.nan, 0.0)
        f["radar/s21"][7] = s21

    copy = damaged_copy(small_dataset, tmp_path, poison)
    with pytest.raises(DatasetError, match=r"damaged\.h5: radar frame 7 holds NaN or infinite"):
        preprocess(small_dataset, copy)


def test_radar_stamps_that_do_not_advance_are_refused_naming_the_frame(
    small_dataset: Path, tmp_path: Path
) -> None:
    """All zero (a damaged timing dataset): the rate was 1e9 / 0 and the split died with
    "OverflowError: cannot convert float infinity to integer". A clock step back is no damage: it is
    a break no window spans (tests/export/test_time_breaks.py), and so is camera stamps stepping back."""

    def zero(f: h5py.File) -> None:
        f["radar/t_ns"][...] = 0

    copy = damaged_copy(small_dataset, tmp_path, zero)
    with pytest.raises(
        DatasetError, match=r"damaged\.h5: radar frame 1 is time-stamped 0 ns, not after .*do not advance"
    ):
        preprocess(small_dataset, copy)


def test_label_positions_no_room_holds_are_refused_naming_the_frame(
    small_dataset: Path, tmp_path: Path
) -> None:
    """A finite but absurd label (1e30 m, or millimetres) gated the RF window nowhere near the person
    and training died in the CCA's factorisation (torch._LinAlgError), naming no file."""

    def misplace(f: h5py.File) -> None:
        positions = f["radar/truth/positions"][()]
        positions[12, 0] = [1e30, 2.0]
        f["radar/truth/positions"][...] = positions

    copy = damaged_copy(small_dataset, tmp_path, misplace)
    with pytest.raises(DatasetError, match=r"damaged\.h5: .*label at radar frame 12 is \(1e\+30, 2\) m"):
        preprocess(small_dataset, copy)
