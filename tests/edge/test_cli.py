"""The vrclip-edge command line, run as the user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from vrclip.edge.recording.reader import SessionReader

from tests.scripts import console_script

EXE = console_script("vrclip-edge")
SMALL = "[camera]\nwidth = 320\nheight = 180\nfps = 5\n[radar]\nframe_rate_hz = 5\n[zed]\nfps = 5\n"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    text = " ".join(lines)
    assert text.startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in text


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "edge.toml"
    path.write_text(SMALL)
    return path


def test_record_simulated_session_and_inspect_it(tmp_path: Path, small_config: Path) -> None:
    out = tmp_path / "s.h5"
    args = ["--seconds", "1", "--people", "2", "--lighting", "night", "--occlusion", "wall", "--seed", "3"]
    result = cli("record", "--simulate", *args, "--out", str(out), "--config", str(small_config))
    assert result.returncode == 0, result.stderr
    with SessionReader(out) as reader:
        assert reader.counts == {"radar": 5, "camera": 5, "depth": 5}
        assert reader.identities == ("person-00", "person-01")
        assert reader.conditions["lighting"] == "night" and reader.conditions["occlusion"] == "wall"
        frame = reader.radar(4)
        assert frame.s21.shape == (144, 201) and frame.clock == "SIMULATED"
        assert frame.truth is not None and frame.truth.positions.shape == (2, 2)
        assert reader.camera(0).rgb.shape == (180, 320, 3)
    shown = cli("inspect", str(out))
    assert shown.returncode == 0 and "radar" in shown.stdout and "person-01" in shown.stdout
    again = cli("record", "--simulate", "--seconds", "1", "--out", str(out), "--config", str(small_config))
    assert_one_line_error(again, str(out), "pass --overwrite")  # the CLI's flag, not the Python keyword
    assert "overwrite=True" not in again.stderr
    replaced = cli("record", "--simulate", "--seconds", "1", "--out", str(out), "--config", str(small_config),
                   "--overwrite")  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr


def test_record_overwrite_that_fails_midway_keeps_the_old_recording(
    tmp_path: Path, small_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`record --overwrite` deleted the old recording before the new one existed: a run that failed
    half-way left the user only its half. The old file is now kept aside, byte for byte."""
    from typer.testing import CliRunner
    from vrclip.edge.cli import app
    from vrclip.edge.sim.rig import SimulatedRig

    out = tmp_path / "s.h5"
    recorded = cli("record", "--simulate", "--seconds", "1", "--out", str(out), "--config", str(small_config))
    assert recorded.returncode == 0, recorded.stderr
    before = out.read_bytes()
    real = SimulatedRig.frames

    def failing(self: SimulatedRig, duration_s: float) -> Iterator[object]:
        for i, frame in enumerate(real(self, duration_s)):
            if i == 4:
                raise RuntimeError("the simulator crashed")
            yield frame

    monkeypatch.setattr(SimulatedRig, "frames", failing)
    args = ["record", "--simulate", "--seconds", "2", "--overwrite", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--config", str(small_config)])
    assert isinstance(result.exception, RuntimeError), result.output
    [old] = tmp_path.glob("s.h5.replaced-*")
    assert old.read_bytes() == before
    with SessionReader(out) as reader:  # and what the failed run recorded is kept too
        assert reader.counts["radar"] >= 1


def test_record_overwrite_stopped_by_ctrl_c_keeps_the_old_recording(
    tmp_path: Path, small_config: Path
) -> None:
    """Ctrl-C cuts the new session short: its frames are kept, and the whole old session is too."""
    from vrclip.edge.config import load_config
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.sim.scene import SceneSpec

    out = tmp_path / "s.h5"
    recorded = cli("record", "--simulate", "--seconds", "1", "--out", str(out), "--config", str(small_config))
    assert recorded.returncode == 0, recorded.stderr
    before = out.read_bytes()
    request = RecordRequest(out, 2.0, SceneSpec(people=("person-00",)), overwrite=True)
    counts = record_simulated(load_config(small_config), request, stop=lambda: True)
    assert counts["radar"] + counts["camera"] + counts["depth"] == 1
    [old] = tmp_path.glob("s.h5.replaced-*")
    assert old.read_bytes() == before


def test_inspect_reads_time_stamps_not_radar_frames(
    tmp_path: Path, small_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inspect` of a long recording must not read every radar frame (gigabytes) for two time stamps."""
    from typer.testing import CliRunner
    from vrclip.edge.cli import app

    out = tmp_path / "s.h5"
    recorded = cli("record", "--simulate", "--seconds", "1", "--out", str(out), "--config", str(small_config))
    assert recorded.returncode == 0, recorded.stderr

    def no_frames(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect read radar frames")

    monkeypatch.setattr(SessionReader, "radar_block", no_frames)
    monkeypatch.setattr(SessionReader, "radar", no_frames)
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "radar        5 frames" in result.output and ", 0.80 s" in result.output  # 5 frames at 5 Hz


def test_same_seed_records_the_same_radar_data(tmp_path: Path, small_config: Path) -> None:
    paths = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for path in paths:
        result = cli(
            "record",
            "--simulate",
            "--seconds",
            "0.4",
            "--seed",
            "9",
            "--out",
            str(path),
            "--config",
            str(small_config),
        )
        assert result.returncode == 0, result.stderr
    with SessionReader(paths[0]) as a, SessionReader(paths[1]) as b:
        np.testing.assert_array_equal(a.radar_block(0, 2)[0], b.radar_block(0, 2)[0])


def test_user_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[imaging]\nnx = 3\n")
    assert_one_line_error(cli("config", "check", str(bad)), "imaging.nx = 3", "allowed range [8, 2048]")
    assert_one_line_error(
        cli("record", "--simulate", "--people", "0", "--out", str(tmp_path / "x.h5")), "empty"
    )
    assert_one_line_error(
        cli("record", "--simulate", "--lighting", "noon", "--out", str(tmp_path / "x.h5")), "noon"
    )
    assert_one_line_error(
        cli("record", "--simulate", "--identity", "alice", "--out", str(tmp_path / "x.h5")), "--identity"
    )
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(3)
    assert_one_line_error(cli("inspect", str(foreign)), str(foreign))
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    assert_one_line_error(cli("inspect", str(text)), str(text))


def test_config_show_is_a_valid_config(tmp_path: Path) -> None:
    shown = cli("config", "show")
    assert shown.returncode == 0
    path = tmp_path / "shown.toml"
    path.write_text(shown.stdout)
    assert cli("config", "check", str(path)).returncode == 0


def test_config_check_warns_when_the_array_cannot_be_swept_at_the_frame_rate(tmp_path: Path) -> None:
    """144 channels x 201 points at 100 kHz IF bandwidth is 289 ms of sweeping: 10 frames/s cannot
    happen on a real VNA. The config is still valid (exit 0); the warning names the keys and the
    bandwidth that would do."""
    slow = tmp_path / "slow.toml"
    slow.write_text("[radar]\nframe_rate_hz = 10\n[radar.sweep]\npoints = 201\nif_bandwidth_hz = 100000\n")
    result = cli("config", "check", str(slow))
    assert result.returncode == 0 and result.stdout.strip() == f"{slow}: ok"
    warning = result.stderr.strip()
    assert warning.startswith("warning:") and len(warning.splitlines()) == 1
    for fragment in (
        "radar.frame_rate_hz 10",
        "radar.sweep.if_bandwidth_hz 100000",
        "289 ms",
        "3.5 frames/s",
    ):
        assert fragment in warning
    assert "at least 289440" in warning
    fast = tmp_path / "fast.toml"
    fast.write_text("[radar]\nframe_rate_hz = 10\n[radar.sweep]\npoints = 201\nif_bandwidth_hz = 300000\n")
    result = cli("config", "check", str(fast))
    assert result.returncode == 0 and result.stderr.strip() == ""


def test_dataset_make_refuses_no_workers(tmp_path: Path) -> None:
    """--jobs 0 or below was taken as 1 without a word."""
    result = cli("dataset", "make", "--out", str(tmp_path / "ds"), "--jobs", "0")
    assert result.returncode == 2 and "--jobs" in result.stderr
    assert not (tmp_path / "ds").exists()


def test_dataset_make_writes_sessions_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ("dataset", "make", "--out", str(out), "--identities", "2", "--sessions", "2", "--seconds", "0.5",
            "--width", "160", "--height", "90", "--rate", "4", "--jobs", "2")  # fmt: skip
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "dataset.json").read_text())
    assert index["format"] == "vrclip-dataset" and len(index["sessions"]) == 4
    conditions = {(s["lighting"], s["occlusion"]) for s in index["sessions"]}
    assert len(conditions) >= 3
    for session in index["sessions"]:
        with SessionReader(out / session["path"]) as reader:
            assert reader.identities == (session["identity"],)
            assert reader.count("radar") == 2 and reader.count("camera") == 2
    first = out / index["sessions"][0]["path"]
    stamp = first.stat().st_mtime_ns
    (out / index["sessions"][1]["path"]).unlink()
    assert cli(*args).returncode == 0
    assert first.stat().st_mtime_ns == stamp, "a finished session was rewritten instead of kept"
    assert (out / index["sessions"][1]["path"]).is_file()


def test_dataset_identities_are_one_person_across_sessions(tmp_path: Path) -> None:
    from vrclip.edge.dataset import DatasetRequest, plan_sessions

    plans = plan_sessions(DatasetRequest(tmp_path, identities=2, sessions=3, seed=5))
    assert {p.world_seed for p in plans} == {5}
    assert len({p.seed for p in plans}) == len(plans)


def test_ctrl_c_keeps_the_recording_and_says_it_was_interrupted(tmp_path: Path, small_config: Path) -> None:
    """typer turns Ctrl-C into exit status 130 without a word; the user must see why it stopped,
    and the frames recorded so far stay in a readable file."""
    import signal
    import time

    out = tmp_path / "cut.h5"
    proc = subprocess.Popen(
        [console_script("vrclip-edge"), "record", "--simulate", "--seconds", "600", "--out", str(out),
         "--config", str(small_config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's & ignores it
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # once: it must not be lost (a KeyboardInterrupt could be)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-1000:])
    assert f"stopped early: {out} keeps" in err
    with SessionReader(out) as reader:
        assert reader.count("radar") > 0


def test_record_runs_outside_the_main_thread(tmp_path: Path, small_config: Path) -> None:
    """Ctrl-C's signal handler can only be installed in the main thread: called from another one,
    `record` failed with a RuntimeError before recording anything."""
    import threading

    from typer.testing import CliRunner
    from vrclip.edge.cli import app

    out = tmp_path / "thread.h5"
    results = []
    args = ["record", "--simulate", "--seconds", "0.2", "--out", str(out), "--config", str(small_config)]
    worker = threading.Thread(target=lambda: results.append(CliRunner().invoke(app, args)))
    worker.start()
    worker.join(60)
    assert results and results[0].exit_code == 0, results and (results[0].output, results[0].exception)
    with SessionReader(out) as reader:
        assert reader.count("radar") > 0


def test_an_endless_session_is_a_usage_error_not_a_traceback(tmp_path: Path, small_config: Path) -> None:
    """`record --seconds inf` passed the option's minimum, then the live path's progress bar (and the
    simulated path's frame count) failed with OverflowError in a page of traceback."""
    out = tmp_path / "s.h5"
    for simulate in (("--simulate",), ()):
        result = cli(
            "record", *simulate, "--seconds", "inf", "--out", str(out), "--config", str(small_config)
        )
        assert_one_line_error(result, "--seconds inf")
        assert not out.exists()


def test_config_check_warns_about_mqtt_files_that_would_stop_the_service(tmp_path: Path) -> None:
    """`config check` passed a config whose password file or CA could not be read: the service then
    failed at its start on the edge box. It now loads them as the service will, and warns."""
    site = tmp_path / "site.toml"
    site.write_text(
        '[sinks.mqtt]\nenabled = true\nusername = "edge"\n'
        f'password_file = "{tmp_path / "missing-password"}"\ntls = true\nca_file = "{tmp_path / "ca.pem"}"\n'
    )
    (tmp_path / "ca.pem").write_text("not a certificate")
    result = cli("config", "check", str(site))
    assert result.returncode == 0, result.stderr
    assert "sinks.mqtt.password_file" in result.stderr and "cannot read it" in result.stderr
    assert "sinks.mqtt.tls: cannot load the certificates (sinks.mqtt.ca_file" in result.stderr
