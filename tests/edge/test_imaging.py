"""Radar imaging: calibration, clutter removal, back-projection accuracy and detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging import imager as imager_module
from vrclip.edge.imaging.bench import simulated_frame
from vrclip.edge.imaging.calibration import ChannelCalibration, ChannelCorrector
from vrclip.edge.imaging.clutter import ClutterFilter
from vrclip.edge.imaging.detect import Detector, ca_cfar
from vrclip.edge.imaging.gpu import backprojection_tables
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.imager import make_imager
from vrclip.edge.imaging.pipeline import ImagingPipeline
from vrclip.edge.imaging.profiles import ProfileLayout, next_fast_length
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator, point_response, sweep_frequencies
from vrclip.edge.sim.scene import Scene, SceneSpec


def _cfg(nx: int = 128, ny: int = 128, mode: str = "2d") -> EdgeConfig:
    cfg = EdgeConfig()
    cfg.imaging.nx, cfg.imaging.ny, cfg.imaging.mode = nx, ny, mode
    return cfg


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a).astype(np.complex128), np.asarray(b).astype(np.complex128)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _point_frame(geometry: ArrayGeometry, cfg: EdgeConfig, target: tuple[float, float, float]) -> np.ndarray:
    freqs = sweep_frequencies(cfg.radar.sweep)
    return point_response(geometry, freqs, np.array([target]), np.array([1.0])).astype(np.complex64)


@pytest.fixture(scope="module")
def scene_frame() -> np.ndarray:
    """A calibrated, clutter-removed frame of a person walking (what the pipeline feeds an imager)."""
    return simulated_frame(EdgeConfig())


# --- back-projection -----------------------------------------------------------------------


@pytest.mark.parametrize("target", [(-1.2, 2.1), (0.3, 3.7), (1.9, 5.6)])
def test_point_target_images_at_its_true_position(
    geometry: ArrayGeometry, target: tuple[float, float]
) -> None:
    cfg = _cfg()
    with make_imager(cfg, geometry, "cpu") as imager:
        image = imager.image(_point_frame(geometry, cfg, (*target, 1.0)))
    assert image.shape == (128, 128) and image.dtype == np.float32
    iy, ix = np.unravel_index(np.argmax(image), image.shape)
    ty, tx = imager.grid.nearest_index(*target)
    assert abs(int(iy) - ty) <= 1 and abs(int(ix) - tx) <= 1, (iy, ix, ty, tx)


def test_exact_reference_images_a_point_at_its_true_position(geometry: ArrayGeometry) -> None:
    cfg = _cfg(24, 24)
    target = (0.9, 3.0)
    image = make_imager(cfg, geometry, "exact").image(_point_frame(geometry, cfg, (*target, 1.0)))
    grid = ImagingGrid.from_config(cfg)
    iy, ix = np.unravel_index(np.argmax(image), image.shape)
    ty, tx = grid.nearest_index(*target)
    assert abs(int(iy) - ty) <= 1 and abs(int(ix) - tx) <= 1


def test_3d_image_puts_a_point_in_its_height_slice(geometry: ArrayGeometry) -> None:
    cfg = _cfg(32, 32, "3d")
    target = (0.4, 2.2, 1.2)
    with make_imager(cfg, geometry, "cpu") as imager:
        image = imager.image(_point_frame(geometry, cfg, target))
    assert image.shape == (4, 32, 32)
    iz, iy, ix = np.unravel_index(np.argmax(image), image.shape)
    assert imager.grid.z_m[iz] == pytest.approx(1.2)
    ty, tx = imager.grid.nearest_index(*target[:2])
    assert abs(int(iy) - ty) <= 1 and abs(int(ix) - tx) <= 1


def test_fast_cpu_matches_exact_reference_2d(geometry: ArrayGeometry, scene_frame: np.ndarray) -> None:
    cfg = _cfg(48, 48)
    exact = make_imager(cfg, geometry, "exact").image(scene_frame)
    with make_imager(cfg, geometry, "cpu") as fast:
        err = _rel(fast.image(scene_frame), exact)
    assert err <= 1e-3, err
    # The error is the linear interpolation's: more zero padding must shrink it (and proves the
    # comparison is sensitive at all).
    with make_imager(cfg, geometry, "cpu", pad_factor=2) as coarse:
        assert _rel(coarse.image(scene_frame), exact) > 3 * err


def test_fast_cpu_matches_exact_reference_3d(geometry: ArrayGeometry, scene_frame: np.ndarray) -> None:
    cfg = _cfg(20, 20, "3d")
    exact = make_imager(cfg, geometry, "exact").image(scene_frame)
    with make_imager(cfg, geometry, "cpu", threads=1) as fast:
        assert _rel(fast.image(scene_frame), exact) <= 1e-3


def test_gpu_tables_reproduce_the_exact_image_without_a_gpu(
    geometry: ArrayGeometry, scene_frame: np.ndarray
) -> None:
    """The GPU kernel's inputs (bins, fractions, carriers, profile layout), evaluated in numpy."""
    cfg = _cfg(32, 32)
    grid = ImagingGrid.from_config(cfg)
    layout = ProfileLayout.build(sweep_frequencies(cfg.radar.sweep), cfg.imaging.zero_pad_factor)
    bins, fracs, carriers = backprojection_tables(grid, geometry, layout)
    profiles = layout.profiles(scene_frame)  # what place_spectrum + cuFFT compute
    rows = np.arange(geometry.n_channels)[:, None]
    a, b = profiles[rows, bins], profiles[rows, bins + 1]
    emulated = np.abs(((a + fracs * (b - a)) * carriers).sum(axis=0)).reshape(grid.shape)
    exact = make_imager(cfg, geometry, "exact").image(scene_frame)
    assert _rel(emulated, exact) <= 1e-3


def test_wrong_frame_shape_is_refused(geometry: ArrayGeometry) -> None:
    with (
        make_imager(_cfg(16, 16), geometry, "cpu") as imager,
        pytest.raises(ValueError, match=r"\(144, 201\)"),
    ):
        imager.image(np.zeros((144, 101), np.complex64))


def test_auto_picks_cpu_without_a_gpu_and_gpu_without_one_is_a_config_error(
    geometry: ArrayGeometry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imager_module, "gpu_available", lambda: False)
    with make_imager(_cfg(16, 16), geometry, "auto") as imager:
        assert imager.name == "cpu"
    with pytest.raises(ConfigError, match=r"imaging\.impl = 'gpu'"):
        make_imager(_cfg(16, 16), geometry, "gpu")


def test_room_beyond_the_unambiguous_range_is_a_config_error(geometry: ArrayGeometry) -> None:
    cfg = _cfg(16, 16)
    cfg.radar.sweep.points = 51  # 40 MHz steps: paths repeat every 7.5 m, the room needs ~14 m
    with pytest.raises(ConfigError, match=r"radar\.sweep\.points"):
        make_imager(cfg, geometry, "cpu")


def test_a_grid_whose_tables_do_not_fit_in_memory_is_a_config_error(
    geometry: ArrayGeometry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast imagers precompute per channel and pixel (CPU 24 B, GPU 16 B): 14.5 GB for an allowed
    2048 x 2048 grid, any amount for a long imaging.z_levels_m. Beyond the machine's memory that
    was a MemoryError traceback or a silent OOM kill at start; it must be a ConfigError naming the
    keys to lower, raised before anything is allocated."""
    monkeypatch.setattr(imager_module, "physical_memory_bytes", lambda: 64 * 2**20)
    cfg = _cfg(128, 128)  # 144 x 128^2: CPU 57 MB, GPU 38 MB, against 32 MB allowed
    with pytest.raises(ConfigError, match=r"imaging\.nx.*imaging\.ny.*imaging\.z_levels_m") as e:
        make_imager(cfg, geometry, "cpu")
    assert "57" in str(e.value) and "cpu imager" in str(e.value)
    layout = ProfileLayout.build(sweep_frequencies(cfg.radar.sweep), 32)
    with pytest.raises(ConfigError, match="gpu imager"):
        backprojection_tables(ImagingGrid.from_config(cfg), geometry, layout)
    with make_imager(_cfg(32, 32), geometry, "cpu") as small:  # 3.5 MB: fits
        assert small.grid.shape == (32, 32)


def test_on_a_jetson_the_gpu_tables_count_twice_against_the_shared_memory(
    geometry: ArrayGeometry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Jetson's GPU shares the host's memory (8 GB on an Orin Nano or an Orin NX 8GB): the tables
    are built on the host and copied to the device, so while they are uploaded both copies are in
    that memory. Counted once, a grid allowed at 50 % of the memory took all of it at start, the OOM
    kill the check is there to prevent."""
    from types import SimpleNamespace

    from vrclip.edge.imaging.gpu import integrated_gpu

    monkeypatch.setattr(imager_module, "physical_memory_bytes", lambda: 64 * 2**20)
    cfg = _cfg(128, 96)  # GPU tables 28 MB: fit in 32 MB once, not twice
    grid = ImagingGrid.from_config(cfg)
    layout = ProfileLayout.build(sweep_frequencies(cfg.radar.sweep), 32)
    bins, _, _ = backprojection_tables(grid, geometry, layout)  # a discrete GPU: its own memory
    assert bins.shape == (144, 128 * 96)
    with pytest.raises(ConfigError, match=r"gpu imager's tables need 57 MB \(built on the host, then copied"):
        backprojection_tables(grid, geometry, layout, shared_memory=True)

    def cupy_on(integrated: int) -> SimpleNamespace:
        runtime = SimpleNamespace(getDeviceProperties=lambda device: {"integrated": integrated})
        return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime, Device=lambda: SimpleNamespace(id=0)))

    assert integrated_gpu(cupy_on(1)) and not integrated_gpu(cupy_on(0))
    assert not integrated_gpu(SimpleNamespace())  # a CuPy that cannot say


def test_fft_length_is_5_smooth_and_at_least_the_padded_sweep() -> None:
    for n in (201 * 8, 1001 * 8, 17, 1):
        m = next_fast_length(n)
        assert m >= n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1
    assert next_fast_length(1608) == 1620


# --- calibration ---------------------------------------------------------------------------


def test_calibration_correction_removes_injected_front_end_errors(geometry: ArrayGeometry) -> None:
    cfg = EdgeConfig()
    scene = Scene(SceneSpec(seed=3))
    errors = FrontEndErrors.draw(geometry.n_channels, seed=11, noise_std=0.0)
    clean = FrontEndErrors(
        np.ones(geometry.n_channels, complex), np.zeros(geometry.n_channels), errors.coupling, 0.0
    )
    state = scene.state(1.0)
    rng = np.random.default_rng(0)
    measured = RadarSimulator(scene, geometry, cfg.radar.sweep, errors).frame(state, rng)
    truth = RadarSimulator(scene, geometry, cfg.radar.sweep, clean).frame(state, rng)
    corrector = ChannelCorrector(
        ChannelCalibration.from_front_end_errors(errors), sweep_frequencies(cfg.radar.sweep)
    )
    assert _rel(measured, truth) > 0.5  # the errors are real ...
    assert _rel(corrector(measured), truth) < 1e-5  # ... and the correction undoes them


def test_uncorrected_channels_defocus_a_point_target(geometry: ArrayGeometry) -> None:
    cfg = _cfg(64, 64)
    errors = FrontEndErrors.draw(geometry.n_channels, seed=5)
    freqs = sweep_frequencies(cfg.radar.sweep)
    ideal = _point_frame(geometry, cfg, (0.5, 3.0, 1.0))
    distorted = (ideal * errors.gain[:, None] * np.exp(-2j * np.pi * freqs * errors.delay_s[:, None])).astype(
        np.complex64
    )
    corrected = ChannelCalibration.from_front_end_errors(errors).apply(distorted, freqs)
    with make_imager(cfg, geometry, "cpu") as imager:
        focused, blurred, fixed = (imager.image(x) for x in (ideal, distorted, corrected))
    assert blurred.max() < 0.5 * focused.max()
    assert _rel(fixed, focused) < 1e-4


def test_calibration_file_round_trip_and_embedded_form(tmp_path: Path) -> None:
    errors = FrontEndErrors.draw(144, seed=2)
    cal = ChannelCalibration.from_front_end_errors(errors)
    path = tmp_path / "cal.json"
    cal.save(path)
    back = ChannelCalibration.load(path, n_channels=144)
    np.testing.assert_array_equal(back.gain, cal.gain)
    np.testing.assert_array_equal(back.delay_s, cal.delay_s)
    wizard = tmp_path / "calibration.json"
    wizard.write_text(json.dumps({"camera": {"fx": 900.0}, "radar_channels": cal.to_dict()}))
    np.testing.assert_array_equal(ChannelCalibration.load(wizard).gain, cal.gain)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=99), "version = 99"),
        (lambda d: d.update(format="other"), "format = 'other'"),
        (lambda d: d["gain_re"].pop(), "does not match"),
        (lambda d: d.update(delay_s=["x"] * 144), "delay_s must be a list of numbers"),
        # Beyond float64: once an OverflowError that named neither file nor key.
        (lambda d: d["delay_s"].__setitem__(5, 10**400), "delay_s must be a list of numbers"),
        (lambda d: d["gain_im"].__setitem__(0, -(10**309)), "gain_im must be a list of numbers"),
        (lambda d: d["gain_re"].__setitem__(3, 0.0) or d["gain_im"].__setitem__(3, 0.0), "gain of channel 3"),
        (lambda d: d["delay_s"].__setitem__(7, 1.0), "delay_s of channel 7"),
        # The same in the drift watch's reference: once an OverflowError traceback at the service's start.
        (
            lambda d: d.update(
                coupling_reference={
                    "delay_s": [10**400] + [5e-9] * 143,
                    "value_re": [1.0] * 144,
                    "value_im": [0.0] * 144,
                }
            ),
            "coupling_reference.delay_s must be 144 finite numbers",
        ),
    ],
)
def test_bad_calibration_files_are_refused_with_the_key(tmp_path: Path, edit: object, message: str) -> None:
    data = ChannelCalibration.from_front_end_errors(FrontEndErrors.draw(144)).to_dict()
    edit(data)  # type: ignore[operator]
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        ChannelCalibration.load(path)
    assert str(path) in str(info.value)


def test_calibration_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no channel calibration file"):
        ChannelCalibration.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ChannelCalibration.load(bad)
    good = tmp_path / "good.json"
    ChannelCalibration.identity(12).save(good)
    with pytest.raises(ConfigError, match="holds 12 channels but the array has 144"):
        ChannelCalibration.load(good, n_channels=144)


# --- clutter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "mti"])
def test_clutter_removal_removes_a_static_scene(geometry: ArrayGeometry, mode: str) -> None:
    cfg = EdgeConfig()
    scene = Scene(SceneSpec(seed=1))
    errors = FrontEndErrors.draw(geometry.n_channels, noise_std=2e-4)
    sim = RadarSimulator(scene, geometry, cfg.radar.sweep, errors)
    still = scene.state(2.0)  # nobody moves: walls, coupling and a person standing still
    rng = np.random.default_rng(4)
    clutter = ClutterFilter(mode, 0.05)
    outputs = [clutter(sim.frame(still, rng)) for _ in range(6)]
    raw_rms = np.sqrt(np.mean(np.abs(sim.frame(still, rng)) ** 2))
    assert not np.any(outputs[0])  # no reference yet
    for out in outputs[1:]:
        rms = np.sqrt(np.mean(np.abs(out) ** 2))
        # Only the thermal noise of the two frames is left (std per part 2e-4 -> rms ~4e-4).
        assert rms < 6e-4 < 1e-2 * raw_rms
    # ... and once someone walks, they come through.
    moving = clutter(sim.frame(scene.state(2.5), rng))
    assert np.sqrt(np.mean(np.abs(moving) ** 2)) > 20 * 6e-4


def test_running_mean_starts_as_a_plain_average_then_decays_with_alpha() -> None:
    clutter = ClutterFilter("mean", alpha=0.25)
    frames = [np.full((2, 3), v, np.complex64) for v in (1.0, 2.0, 3.0, 6.0)]
    out = [clutter(f) for f in frames]
    np.testing.assert_allclose(out[1], 1.0)  # 2 - mean(1)
    np.testing.assert_allclose(out[2], 1.5)  # 3 - mean(1, 2)
    np.testing.assert_allclose(out[3], 4.0)  # 6 - mean(1, 2, 3); weight 1/4 = alpha from here on
    assert clutter.background is not None
    np.testing.assert_allclose(clutter.background, 0.75 * 2.0 + 0.25 * 6.0)
    with pytest.raises(ValueError, match="shape changed"):
        clutter(np.zeros((3, 3), np.complex64))
    clutter.reset()
    assert not np.any(clutter(frames[0])) and clutter.frames_seen == 1


def test_clutter_none_passes_frames_through() -> None:
    frame = (np.arange(6) + 1j).reshape(2, 3).astype(np.complex64)
    np.testing.assert_array_equal(ClutterFilter("none")(frame), frame)
    with pytest.raises(ValueError, match=r"imaging\.clutter"):
        ClutterFilter("median")  # type: ignore[arg-type]


# --- detection ---------------------------------------------------------------------------------


def _blob(grid: ImagingGrid, x: float, y: float, amp: float, width: float = 0.15) -> np.ndarray:
    xx, yy = np.meshgrid(grid.x_m, grid.y_m)
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))


def test_cfar_and_nms_find_the_people_in_a_synthetic_heatmap() -> None:
    grid = ImagingGrid.from_config(EdgeConfig())
    rng = np.random.default_rng(0)
    floor = np.abs(rng.normal(size=grid.shape) + 1j * rng.normal(size=grid.shape)) * 0.05
    heat = (
        floor
        + _blob(grid, -1.0, 2.0, 10.0)
        + _blob(grid, -0.75, 2.15, 6.0)  # a limb of the same person, 0.3 m away: suppressed
        + _blob(grid, 1.2, 4.6, 5.0)
        + _blob(grid, 0.0, 5.8, 0.05)  # below the noise: not a person
    )
    detections = Detector(grid, threshold_db=12.0, max_people=8)(heat)
    assert len(detections) == 2
    first, second = detections
    assert first.score >= 12.0 and second.score >= 12.0
    # The first is the stronger person, at the magnitude centroid of its two parts.
    assert np.hypot(first.x_m - (-0.91), first.y_m - 2.05) < 0.12
    assert np.hypot(second.x_m - 1.2, second.y_m - 4.6) < 0.05
    assert len(Detector(grid, max_people=1)(heat)) == 1
    assert Detector(grid)(np.zeros(grid.shape)) == []
    assert Detector(grid)(floor) == []  # noise alone raises no alarm at 12 dB


def test_cfar_snr_is_zero_db_on_a_flat_map_and_high_on_a_spike() -> None:
    power = np.ones((40, 50))
    np.testing.assert_allclose(ca_cfar(power, (2, 2), (3, 3)), 0.0, atol=1e-9)
    power[20, 25] = 1000.0
    snr = ca_cfar(power, (2, 2), (3, 3))
    assert snr[20, 25] == pytest.approx(30.0, abs=0.01)


# --- pipeline ------------------------------------------------------------------------------------


def test_pipeline_3d_floor_map_integrates_the_heights(geometry: ArrayGeometry) -> None:
    cfg = _cfg(24, 24, "3d")
    cfg.imaging.clutter = "none"
    pipe = ImagingPipeline(cfg, geometry, impl="cpu")
    result = pipe.process(_point_frame(geometry, cfg, (0.0, 2.5, 0.8)))
    assert result.image.shape == (4, 24, 24)
    np.testing.assert_allclose(
        result.floor, np.sqrt((result.image.astype(float) ** 2).sum(axis=0)), rtol=1e-6
    )
    assert len(result.detections) == 1
    d = result.detections[0]
    assert np.hypot(d.x_m - 0.0, d.y_m - 2.5) < 0.3
    pipe.close()
