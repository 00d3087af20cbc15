"""Deterministic session content and a writer process for tests/edge/test_recording.py.

Every frame is a pure function of its index, so a test can check what a separate (possibly killed)
writer process put in the file bit for bit without any channel back from that process.

Run as ``python recording_child.py MODE PATH``:
- ``kill``: write frames of all three streams forever (up to a cap), flushing after every 3 and
  printing ``flushed N``; the test kills it with SIGKILL mid-write.
- ``kill-overwrite``: as ``kill``, replacing the recording already at PATH (``overwrite=True``).
- ``live``: write 5 frames, flush, print ``flushed 5``; on a stdin line write 4 more WITHOUT flushing
  (the writer's timer must make them visible), print ``wrote 9``; on the next line close, print ``closed``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from vrclip.edge.frames import CLOCK_SIMULATED, CameraFrame, DepthFrame, GroundTruth, RadarFrame
from vrclip.edge.geometry import load_geometry
from vrclip.edge.recording import SessionWriter

CHANNELS, POINTS = 144, 201
HEIGHT, WIDTH = 72, 128
DEPTH_H, DEPTH_W = 36, 64
IDENTITIES = ("alice", "bob", "carol", "dave")
CONDITIONS = {"lighting": "night", "occlusion": "wall", "people": ["alice", "bob", "carol"], "seed": 7}
#: The built-in 12 x 12 array (144 channels, as CHANNELS): readers refuse a geometry that does not
#: describe the radar stream's channels.
GEOMETRY = load_geometry().to_dict()
CONFIG_TOML = (
    "[radar]\npoints = 201\nstart_hz = 0.8e9\nstop_hz = 2.8e9\n\n[camera]\nwidth = 128\nheight = 72\n"
)
#: Frames the kill-mode child writes at most (about 80 MB), in case nobody kills it.
KILL_CAP = 300


def freqs_hz() -> np.ndarray:
    return np.linspace(0.8e9, 2.8e9, POINTS)


def truth(i: int) -> GroundTruth | None:
    """Frame i's ground truth: none on every 7th frame, 0..3 people otherwise."""
    if i % 7 == 6:
        return None
    k = i % 4
    rng = np.random.default_rng(50_000 + i)
    ids = tuple(IDENTITIES[(i + j) % len(IDENTITIES)] for j in range(k))
    positions = rng.uniform(-3, 3, (k, 2)).astype(np.float32)
    visible = rng.random(k) < 0.6
    return GroundTruth(identities=ids, positions=positions, visible=visible)


def t_ns(i: int) -> int:
    return 1_700_000_000_000_000_000 + i * 33_333_333


def radar_frame(i: int, clock: str = CLOCK_SIMULATED) -> RadarFrame:
    rng = np.random.default_rng(i)
    s21 = (rng.standard_normal((CHANNELS, POINTS)) + 1j * rng.standard_normal((CHANNELS, POINTS))).astype(
        np.complex64
    )
    return RadarFrame(seq=1000 + i, t_ns=t_ns(i), clock=clock, s21=s21, truth=truth(i))


def camera_frame(i: int, clock: str = CLOCK_SIMULATED) -> CameraFrame:
    """A smooth image (JPEG-friendly) with a bright box that moves with i, so frames differ."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 2, y * 3, (x + y + 5 * i) % 256], axis=-1).astype(np.uint8)
    top, left = (3 * i) % (HEIGHT - 20), (7 * i) % (WIDTH - 30)
    rgb[top : top + 20, left : left + 30] = (250, 40, 40)
    return CameraFrame(seq=2000 + i, t_ns=t_ns(i) + 1_000, clock=clock, rgb=rgb, truth=truth(i))


def depth_frame(i: int, clock: str = CLOCK_SIMULATED) -> DepthFrame:
    rng = np.random.default_rng(90_000 + i)
    depth = (1.0 + 0.01 * i + rng.uniform(0, 5, (DEPTH_H, DEPTH_W))).astype(np.float32)
    depth[:4, :4] = np.nan
    k = (i + 1) % 3
    positions = rng.uniform(-3, 3, (k, 2)).astype(np.float32)
    return DepthFrame(
        seq=3000 + i, t_ns=t_ns(i) + 2_000, clock=clock, depth=depth, positions=positions, truth=truth(i)
    )


def open_writer(path: str | Path, flush_interval_s: float = 1.0, **kw: object) -> SessionWriter:
    return SessionWriter(
        path,
        config_toml=CONFIG_TOML,
        geometry=kw.pop("geometry", GEOMETRY),
        freqs_hz=freqs_hz(),
        radar_channels=CHANNELS,
        conditions=CONDITIONS,
        identities=IDENTITIES,
        camera_size=(HEIGHT, WIDTH),
        depth_size=(DEPTH_H, DEPTH_W),
        clock=CLOCK_SIMULATED,
        max_people=4,
        flush_interval_s=flush_interval_s,
        **kw,  # type: ignore[arg-type]
    )


def write_all(w: SessionWriter, i: int) -> None:
    w.write_radar(radar_frame(i))
    w.write_camera(camera_frame(i))
    w.write_depth(depth_frame(i))


def main(mode: str, path: str) -> None:
    if mode in ("kill", "kill-overwrite"):
        # Only explicit flushes: whatever the kill catches after "flushed N" must not be counted.
        w = open_writer(path, flush_interval_s=3600.0, overwrite=mode == "kill-overwrite")
        for i in range(KILL_CAP):
            write_all(w, i)
            if (i + 1) % 3 == 0:
                print(f"flushed {w.flush()['radar']}", flush=True)
        time.sleep(60)  # never closes cleanly: the test kills it
    elif mode == "live":
        w = open_writer(path, flush_interval_s=0.2)
        for i in range(5):
            write_all(w, i)
        print(f"flushed {w.flush()['radar']}", flush=True)
        sys.stdin.readline()
        for i in range(5, 9):
            write_all(w, i)
        print("wrote 9", flush=True)
        sys.stdin.readline()
        w.close()
        print("closed", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
