"""The radar-channel calibration: its fit against the simulator's known front end, its quality gates,
and the wizard end to end through the SCPI simulators and the real drivers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from vrclip.calibration.channels import Averaged, average_frames, check_quality, fit_channels
from vrclip.edge.config import SPEED_OF_LIGHT, EdgeConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator
from vrclip.edge.sim.scene import Scene, SceneSpec

from tests.scripts import console_script

CONFIG = EdgeConfig()
GEOMETRY = load_geometry(CONFIG.radar.array)
ERRORS = FrontEndErrors.draw(GEOMETRY.n_channels, 1234)
REFLECTOR = np.array([0.4, 3.2, 1.1])


def _measure(reflectors: tuple, frames: int = 8, seed: int = 0) -> tuple[Averaged, np.ndarray]:
    spec = SceneSpec(room=CONFIG.room, people=(), empty_room=True, reflectors=reflectors)
    scene = Scene(spec)
    sim = RadarSimulator(scene, GEOMETRY, CONFIG.radar.sweep, ERRORS)
    rng = np.random.default_rng(seed)
    return average_frames(lambda: sim.frame(scene.state(0.0), rng), frames), sim.freqs_hz


def _assert_matches_front_end(calibration: ChannelCalibration) -> None:
    """Delays exactly, gains up to one real positive factor (the reflector's unknown strength)."""
    assert np.abs(calibration.delay_s - ERRORS.delay_s).max() < 0.5e-12
    ratio = calibration.gain / ERRORS.gain
    assert np.abs(np.angle(ratio)).max() < 1e-3
    assert np.abs(ratio).std() / np.abs(ratio).mean() < 1e-3
    assert np.abs(calibration.gain).mean() == pytest.approx(1.0)


def test_fit_recovers_every_channels_gain_and_delay() -> None:
    empty, freqs = _measure(())
    target, _ = _measure(((*REFLECTOR, 3.0),), seed=1)
    fit = fit_channels(empty, target, GEOMETRY, freqs, REFLECTOR)
    _assert_matches_front_end(fit.calibration)
    assert fit.coherence > 0.999 and fit.coherence_uncalibrated < 0.1
    assert fit.residual.max() < 0.01 and np.median(fit.snr_db) > 40
    assert fit.suspect_channels() == []
    check_quality(fit)


def test_noise_estimate_is_the_spread_of_the_frames() -> None:
    rng = np.random.default_rng(3)
    std = 0.01  # per real and imaginary part
    frames = [rng.normal(0, std, (4, 50)) + 1j * rng.normal(0, std, (4, 50)) for _ in range(40)]
    it = iter(frames)
    averaged = average_frames(lambda: next(it), 40)
    np.testing.assert_allclose(averaged.noise_var, 2 * std**2 / 40, rtol=0.15)
    with pytest.raises(UserError, match="at least 2 frames"):
        average_frames(lambda: frames[0], 1)
    with pytest.raises(UserError, match="NaN"):
        average_frames(lambda: np.full((4, 50), np.nan, complex), 3)


def test_a_missing_reflector_is_refused_with_what_to_check() -> None:
    empty, freqs = _measure(())
    again, _ = _measure((), seed=1)
    fit = fit_channels(empty, again, GEOMETRY, freqs, REFLECTOR)
    with pytest.raises(UserError, match=r"dB over the noise .*reflector stands at the position given"):
        check_quality(fit)


def test_channels_that_measured_badly_are_named_and_refused() -> None:
    empty, freqs = _measure(())
    target, _ = _measure(((*REFLECTOR, 3.0),), seed=1)
    broken = target.mean.copy()
    bad = np.arange(0, 144, 6)  # 24 channels: a loose cable on one switch port
    broken[bad] = empty.mean[bad] + 1e-3 * np.exp(
        2j * np.pi * np.random.default_rng(5).random(broken[bad].shape)
    )
    fit = fit_channels(empty, Averaged(broken, target.noise_var, target.frames), GEOMETRY, freqs, REFLECTOR)
    assert set(fit.suspect_channels()) == set(bad.tolist())
    with pytest.raises(UserError, match=r"24 of 144 channels measured badly .*channels 0, 6, 12"):
        check_quality(fit)


def test_a_reflector_against_the_array_is_refused_before_measuring() -> None:
    empty, freqs = _measure(())
    with pytest.raises(UserError, match=r"at least 1 m in front of the array"):
        fit_channels(empty, empty, GEOMETRY, freqs, np.array([0.0, 0.1, 1.0]))


@pytest.mark.parametrize(
    "position",
    [REFLECTOR * 1000, REFLECTOR * 100, np.array([np.nan, 3.2, 1.1]), np.array([0.4, np.inf, 1.1])],
)
def test_a_reflector_position_not_in_metres_is_refused_before_measuring(position: np.ndarray) -> None:
    """A position surveyed in millimetres (or centimetres) and typed as is once passed: the fit then
    put the 3.4-km path difference into the channels' delays, 575 ps RMS wrong from channel to
    channel, and still reported a coherence of 1.000, so the file was written and every image blurred."""
    from vrclip.calibration.channels import reflector_response

    with pytest.raises(UserError, match=r"metres") as info:
        reflector_response(GEOMETRY, CONFIG.radar.sweep.start_hz + np.arange(3) * 1e7, position)
    assert "--reflector" in str(info.value)


def test_wizard_calibrates_the_simulated_rig_through_the_drivers_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "calibration.json"
    args = [console_script("vrclip-calibrate"), "channels", "--simulate", "--reflector", "0.4", "3.2", "1.1"]
    result = subprocess.run(
        [*args, "--frames", "4", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "144 channels" in result.stdout and f"wrote {out}" in result.stdout
    calibration = ChannelCalibration.load(out, GEOMETRY.n_channels)  # what the runtime reads
    _assert_matches_front_end(calibration)
    doc = json.loads(out.read_text())
    assert doc["reflector_m"] == [0.4, 3.2, 1.1] and doc["coherence"] > 0.999
    # The coupling reference the running rig watches its drift against: each channel's direct
    # coupling, where its cable delay and its antennas' separation put it.
    assert calibration.coupling is not None
    expected = ERRORS.delay_s + GEOMETRY.direct_path_lengths() / SPEED_OF_LIGHT
    assert np.abs(calibration.coupling.delay_s - expected).max() < 0.1e-9
    first = out.read_bytes()
    again = subprocess.run(
        [*args, "--frames", "3", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "calibration.json.prev").read_bytes() == first
    assert f"previous one is kept as {out}.prev" in again.stdout


def test_wizard_errors_are_one_line_and_leave_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "calibration.json"
    out.write_text("old")
    cmd = [console_script("vrclip-calibrate"), "channels", "--simulate", "--frames", "2", "--out", str(out)]
    close = subprocess.run(
        [*cmd, "--reflector", "0", "0.2", "1"], capture_output=True, text=True, timeout=120
    )
    assert close.returncode == 2 and "Traceback" not in close.stderr
    assert "in front of the array" in close.stderr
    folder = subprocess.run(
        [*cmd[:-1], str(tmp_path), "--reflector", "0.4", "3.2", "1.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert folder.returncode == 2 and "is a directory" in folder.stderr
    assert out.read_text() == "old"


def _run_wizard(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`vrclip-calibrate channels` run as an operator would, non-interactively, with `config`."""
    return subprocess.run(
        [console_script("vrclip-calibrate"), "channels", "--reflector", "0.4", "3.2", "1.1", "--yes",
         "-c", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_wizard_without_a_rig_says_which_instrument_it_could_not_reach(tmp_path: Path) -> None:
    import socket

    from vrclip.edge.config import config_to_toml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        config_to_toml(EdgeConfig.model_validate({"radar": {"switch": {"port": f"tcp://127.0.0.1:{port}"}}}))
    )
    out = tmp_path / "calibration.json"
    result = _run_wizard(cfg, out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot connect: switch tcp://127.0.0.1:{port}" in result.stderr
    assert not out.exists()


def test_a_running_service_is_named_before_the_wizard_touches_the_radar(tmp_path: Path) -> None:
    """The service's drift warning sends the operator to `vrclip-calibrate channels` while the service
    holds the VNA and the switch: the wizard says so before it measures, as `record` and the
    self-test do, rather than reconfiguring the sweep under the running service."""
    from vrclip.edge.gallery.store import GalleryStore
    from vrclip.edge.pipeline.live_enrolment import LiveEnrolment
    from vrclip.edge.service.control import ControlServer

    sock = tmp_path / "control.sock"
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[paths]\ncontrol_socket = "{sock}"\n')
    out = tmp_path / "calibration.json"
    with GalleryStore(tmp_path / "g.sqlite") as store, ControlServer(sock, LiveEnrolment(store, 32)):
        done = _run_wizard(toml, out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"vrclip-edge is running (it answers on {sock}) and holds the rig's sensors" in done.stderr
    assert "Step 1 of 2" not in done.stderr and not out.exists()


def test_the_simulated_rig_draws_fresh_noise_for_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reflector minus the empty room keeps the noise of both measurements, as on a real rig
    (both steps once drew the very same noise, so their difference came out noise-free)."""
    from vrclip.calibration import wizard

    monkeypatch.setattr(wizard, "SIMULATED_REFLECTOR_AMPLITUDE", 0.0)  # only the noise differs
    measured = {}
    for step in wizard.STEPS:
        with wizard._simulated_radar(CONFIG, step, REFLECTOR, GEOMETRY) as read:
            measured[step] = average_frames(read, 2)
    difference = measured["reflector"].mean - measured["empty"].mean
    expected = (measured["reflector"].noise_var + measured["empty"].noise_var).mean()
    assert 0.3 * expected < (np.abs(difference) ** 2).mean() < 3 * expected


def test_a_radar_that_fails_every_sweep_ends_the_measurement_with_its_fault() -> None:
    """A VNA returning NaN every sweep reconnects fine, so the drivers dropped its frames forever and
    the wizard hung; after a few dropped frames in a row it now stops with the fault as its error."""
    import threading

    from vrclip.calibration.wizard import _radar
    from vrclip.edge.config import parse_config
    from vrclip.edge.radar.simulated import SimulatedRadar

    spec = SceneSpec(room=CONFIG.room, people=(), empty_room=True)
    outcome: list[BaseException | None] = []
    with SimulatedRadar(scene_spec=spec, sweep=CONFIG.radar.sweep, vna_fault="nan") as sim:
        data = CONFIG.model_dump(mode="json")
        data["radar"]["vna"]["resource"] = sim.vna_resource
        data["radar"]["switch"]["port"] = sim.switch_url
        config = parse_config(data, source="test")

        def measure() -> None:
            try:
                with _radar(config) as read:
                    average_frames(read, 2)
                outcome.append(None)
            except Exception as exc:  # whatever ended it, the test reports
                outcome.append(exc)

        worker = threading.Thread(target=measure, daemon=True)
        worker.start()
        worker.join(20.0)
        assert not worker.is_alive(), "the measurement kept dropping frames instead of giving up"
    (error,) = outcome
    assert isinstance(error, UserError), error
    assert "measurement failed" in str(error) and "nan" in str(error)


def test_the_progress_display_is_stopped_while_the_operator_is_prompted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A running progress display redraws its lines several times a second, which wiped the "Press
    Enter when ready" line off the terminal while the wizard waited on it."""
    import typer
    from typer.testing import CliRunner
    from vrclip.calibration import cli, wizard

    bars = []
    make_bar = cli.progress_bar
    monkeypatch.setattr(cli, "progress_bar", lambda: bars.append(make_bar()) or bars[-1])
    live_at_prompt = []
    monkeypatch.setattr(typer, "prompt", lambda *a, **k: live_at_prompt.append(bars[-1].live.is_started))

    def fake_wizard(
        *_: object, frames: int, prompt: Callable[[str], None], tick: Callable, **__: object
    ) -> None:
        for step in wizard.STEPS:
            prompt(step)
            advance = tick(step)
            for _ in range(frames):
                advance()
        raise UserError("stop here")

    monkeypatch.setattr(wizard, "run_wizard", fake_wizard)
    result = CliRunner().invoke(
        cli.app,
        ["channels", "--reflector", "0.4", "3.2", "1.1", "--frames", "2", "--out", str(tmp_path / "c")],
    )
    assert isinstance(result.exception, UserError), result.output
    assert live_at_prompt == [False, False]
    assert not bars[-1].live.is_started


def test_a_calibration_file_that_is_a_link_is_written_through(tmp_path: Path) -> None:
    """Renaming the new file over a symbolic link replaced the link with a plain file and left the
    file it pointed to (the one other tools follow the link to) with the old calibration."""
    from vrclip.calibration.channels import ChannelFit
    from vrclip.calibration.wizard import write_calibration

    n = 4
    fit = ChannelFit(ChannelCalibration.identity(n), np.full(n, 40.0), np.zeros(n), 1.0, 0.1)
    real = tmp_path / "versions" / "site.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "calibration.json"
    link.symlink_to(real)
    kept = write_calibration(link, fit, {"source": "test"})
    assert link.is_symlink() and link.resolve() == real
    assert ChannelCalibration.load(link, n).n_channels == n
    assert kept == real.with_name("site.json.prev") and kept.read_text() == "old"


def test_a_copy_to_prev_cut_short_keeps_the_last_good_prev(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The old file was copied straight onto .prev: a copy cut short (Ctrl-C, a full disk) left half a
    file there in place of the last good previous version. The main file was never at risk."""
    import shutil

    from vrclip.calibration import files

    target = tmp_path / "calibration.json"
    target.write_text("current")
    (tmp_path / "calibration.json.prev").write_text("the one before")

    def copy_cut_short(src: object, dst: object) -> None:
        Path(str(dst)).write_text("curr")
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copy2", copy_cut_short)
    with pytest.raises(KeyboardInterrupt):
        files.replace_keeping_previous(target, b"new", "the calibration", "check the path")
    assert target.read_text() == "current"
    assert (tmp_path / "calibration.json.prev").read_text() == "the one before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json", "calibration.json.prev"]
