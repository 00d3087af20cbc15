"""The config file: defaults run, bad input is reported with key, value and allowed range."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from vrclip.edge.config import EdgeConfig, config_to_toml, load_config, parse_config
from vrclip.edge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "edge.example.toml"


def test_defaults_round_trip_through_toml() -> None:
    text = config_to_toml(EdgeConfig())
    assert parse_config(tomllib.loads(text)) == EdgeConfig()


def test_example_config_in_systemd_is_valid_and_complete() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg == EdgeConfig(), "systemd/edge.example.toml drifted from the defaults: regenerate it"


def test_partial_file_overrides_only_what_it_states(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[radar.sweep]\npoints = 1001\n[imaging]\nnx = 64\n")
    cfg = load_config(path)
    assert cfg.radar.sweep.points == 1001 and cfg.imaging.nx == 64
    assert cfg.radar.sweep.start_hz == 0.8e9


def test_sweep_derived_figures() -> None:
    sweep = EdgeConfig().radar.sweep
    assert sweep.step_hz == pytest.approx(10e6)
    assert sweep.range_resolution_m == pytest.approx(0.0749, abs=1e-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[radar.sweep]\nstart_hz = 5e12\n",
            ["radar.sweep.start_hz", "5000000000000.0", "allowed range [1000000.0, 20000000000.0]"],
        ),
        ("[imaging]\nnx = 4\n", ["imaging.nx = 4", "allowed range [8, 2048]"]),
        ("[camera]\nwidthh = 3\n", ["unknown key 'widthh' in [camera]", "width"]),
        ("bogus = 1\n", ["unknown key 'bogus' at the top level"]),
        ("[radar.sweep]\nstart_hz = 3e9\n", ["radar.sweep.stop_hz", "must be above radar.sweep.start_hz"]),
        ("[imaging]\nclutter = 'median'\n", ["imaging.clutter = 'median'", "'mean'"]),
        ("[room]\nx_min_m = 3.0\n", ["room.x_max_m", "must be above room.x_min_m"]),
        # NaN and infinity are valid TOML floats but no valid setting: refused by `config check`.
        ("[camera]\nposition_m = [nan, 0.0, 1.6]\n", ["camera.position_m[0] = nan", "finite number"]),
        ("[radar]\nframe_rate_hz = inf\n", ["radar.frame_rate_hz = inf", "finite number"]),
        ("[gallery]\nthreshold = -nan\n", ["gallery.threshold = nan", "finite number"]),
        ("[radar.array]\nposition_m = [0.0, 0.0, -inf]\n", ["radar.array.position_m[2] = -inf"]),
        # Checks that once failed only when the runtime started.
        ('[imaging]\nmode = "3d"\nz_levels_m = []\n', ["imaging.z_levels_m = []", 'imaging.mode = "3d"']),
        (
            '[sinks.mqtt]\nenabled = true\ntopic = "a/+/b"\n',
            ["sinks.mqtt.topic = 'a/+/b'", "wildcards + and #"],
        ),
        ('[sinks.mqtt]\nenabled = true\ntopic = "vrclip/#"\n', ["sinks.mqtt.topic = 'vrclip/#'"]),
        ('[sinks.mqtt]\nenabled = true\ntopic = ""\n', ["sinks.mqtt.topic = ''", "non-empty"]),
    ],
)
def test_errors_name_key_value_and_range(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in expected:
        assert fragment in message


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[radar\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_settings_only_checked_where_they_are_used(tmp_path: Path) -> None:
    """A disabled MQTT sink's topic and a 2D config's z levels are never used: they do not fail."""
    path = tmp_path / "edge.toml"
    path.write_text('[sinks.mqtt]\ntopic = "a/+/b"\n[imaging]\nmode = "2d"\nz_levels_m = []\n')
    cfg = load_config(path)
    assert cfg.sinks.mqtt.topic == "a/+/b" and cfg.imaging.z_levels_m == ()


def test_time_server_keys_are_those_the_timebase_commands_use() -> None:
    from vrclip.edge.timebase.start_protocol import DEFAULT_PORT

    sync = EdgeConfig().sync
    assert sync.time_server.port == DEFAULT_PORT and sync.clock == "CLOCK_REALTIME"
    assert tomllib.loads(EXAMPLE.read_text())["sync"]["time_server"]["port"] == DEFAULT_PORT


def test_a_principal_point_measured_at_another_camera_size_is_refused(tmp_path: Path) -> None:
    """`vrclip-calibrate intrinsics` wrote the lens of a 1280x720 camera; the installer then set the
    camera to 1920x1080. Kept, the point would shift every crop by a sixth of the image."""
    measured = "principal_px = [643.2, 355.8]\ndistortion = [-0.12, 0.03, 0.0, 0.0, 0.0]\n"
    site = tmp_path / "site.toml"
    site.write_text(f"[camera]\nwidth = 1280\nheight = 720\n{measured}")
    assert load_config(site).camera.principal_px == (643.2, 355.8)
    for width, height in ((1920, 1080), (640, 360)):
        site.write_text(f"[camera]\nwidth = {width}\nheight = {height}\n{measured}")
        with pytest.raises(ConfigError) as info:
            load_config(site)
        message = str(info.value)
        assert str(site) in message and "camera.principal_px = [643.2, 355.8]" in message
        assert "vrclip-calibrate intrinsics" in message and "camera.width" in message
    site.write_text("[camera]\ndistortion = [-0.1, 40.0, 0.0, 0.0, 0.0]\n")
    with pytest.raises(ConfigError, match=r"camera\.distortion = .*vrclip-calibrate intrinsics"):
        load_config(site)


def test_four_distortion_coefficients_are_k1_k2_p1_p2(tmp_path: Path) -> None:
    """OpenCV tools often print four coefficients; k3 is then zero, not a validation error."""
    site = tmp_path / "site.toml"
    site.write_text("[camera]\ndistortion = [-0.1, 0.02, 0.001, -0.002]\n")
    assert load_config(site).camera.distortion == (-0.1, 0.02, 0.001, -0.002, 0.0)


def test_an_empty_calibration_file_path_is_refused_where_the_real_rig_reads_it(tmp_path: Path) -> None:
    """`paths.calibration_file = ""` passed the check, and `run` then failed with
    "error: .: cannot read channel calibration: [Errno 21] Is a directory". Refusing it when the
    config is parsed went too far: the simulated rig never reads the file, and the config stored in
    every recording is parsed again to replay, label and train on it, so recordings made with such a
    config became unreadable. The real rig refuses it, naming the key, and `config check` warns."""
    from vrclip.edge.pipeline.app import configured_calibration
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.recording.reader import SessionReader
    from vrclip.edge.sim.scene import SceneSpec

    from tests.edge.test_cli import cli

    config = parse_config(
        {"paths": {"calibration_file": ""}, "camera": {"width": 64, "height": 36}}, source="site.toml"
    )
    with pytest.raises(ConfigError, match=r'paths\.calibration_file = "": name the radar calibration file'):
        configured_calibration(config, 144)
    recording = tmp_path / "sim.h5"
    record_simulated(config, RecordRequest(recording, 0.3, SceneSpec(config.room, people=("alice",))))
    with SessionReader(recording) as reader:
        assert reader.edge_config().paths.calibration_file == ""
    site = tmp_path / "site.toml"
    site.write_text('[paths]\ncalibration_file = ""\n')
    result = cli("config", "check", str(site))
    assert result.returncode == 0 and "warning: " in result.stderr, result.stderr
    assert 'paths.calibration_file = "": name the radar calibration file' in result.stderr
