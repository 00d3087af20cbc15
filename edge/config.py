"""The one TOML configuration of a VRCLIP edge system, validated with pydantic at load.

Every section has defaults that run the simulated rig, so `vrclip-edge config show` prints a
complete, working file. Validation errors name the key, the bad value and the allowed range,
because the person reading them is on site with a laptop, not in the source code.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from vrclip.edge.errors import ConfigError
from vrclip.edge.textfiles import MAX_CONFIG_BYTES, read_text_capped
from vrclip.edge.timebase.start_protocol import DEFAULT_PORT as DEFAULT_TIME_SERVER_PORT

#: Where the systemd unit expects the config.
DEFAULT_CONFIG_PATH = Path("/etc/vrclip/edge.toml")

SPEED_OF_LIGHT = 299_792_458.0


class Section(BaseModel):
    """Base of every section: unknown keys are errors (a typo must not silently fall back to a default),
    and so are NaN and infinity in any number (TOML spells them `nan` and `inf`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SweepConfig(Section):
    """The SFCW sweep the VNA performs for every Tx/Rx pair."""

    start_hz: Annotated[float, Field(ge=1e6, le=20e9)] = 0.8e9
    stop_hz: Annotated[float, Field(ge=1e6, le=20e9)] = 2.8e9
    points: Annotated[int, Field(ge=2, le=100_001)] = 201
    if_bandwidth_hz: Annotated[float, Field(ge=1.0, le=10e6)] = 100e3
    power_dbm: Annotated[float, Field(ge=-90.0, le=20.0)] = 0.0

    @model_validator(mode="after")
    def _stop_above_start(self) -> SweepConfig:
        if self.stop_hz <= self.start_hz:
            raise ValueError(
                f"radar.sweep.stop_hz = {self.stop_hz:g} must be above "
                f"radar.sweep.start_hz = {self.start_hz:g}"
            )
        return self

    @property
    def step_hz(self) -> float:
        return (self.stop_hz - self.start_hz) / (self.points - 1)

    @property
    def min_sweep_s(self) -> float:
        """Lower bound of one sweep's duration: a VNA measures one point per 1 / IF bandwidth at best
        (the instrument adds settling). The VNA driver's timeouts and the frame-rate check read it."""
        return self.points / self.if_bandwidth_hz

    @property
    def range_resolution_m(self) -> float:
        """c / 2B: the one-way range resolution."""
        return SPEED_OF_LIGHT / (2.0 * (self.stop_hz - self.start_hz))


class VnaConfig(Section):
    """How to reach the vector network analyzer (a VISA resource string)."""

    resource: str = "TCPIP0::127.0.0.1::5025::SOCKET"
    dialect: Literal["keysight", "rs"] = "keysight"
    timeout_ms: Annotated[int, Field(ge=100, le=600_000)] = 5000
    reconnect_max_backoff_s: Annotated[float, Field(ge=0.1, le=600.0)] = 30.0


class SwitchConfig(Section):
    """The 12T/12R RF switch controller: `tcp://host:port` or a serial device path."""

    port: str = "tcp://127.0.0.1:5026"
    baudrate: Annotated[int, Field(ge=1200, le=4_000_000)] = 115_200
    timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000
    #: How the switch moves to the next pair: "command" sends NEXT over the link before every sweep;
    #: "trigger" has the controller step on the VNA's sweep-end pulse (a cable from the VNA's
    #: trigger output to the controller's STEP IN; protocol 1.3), saving a round trip per channel.
    step: Literal["command", "trigger"] = "command"


class ArrayConfig(Section):
    """Which antenna layout, and where the array stands in the room."""

    geometry_file: str = "builtin:array_12x12"
    #: Array phase centre in room coordinates (x across, y into the room, z up), metres.
    position_m: tuple[float, float, float] = (0.0, 0.0, 1.0)
    #: Rotation of the array about z; 0 means boresight along +y.
    yaw_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = 0.0


class RadarConfig(Section):
    vna: VnaConfig = VnaConfig()
    sweep: SweepConfig = SweepConfig()
    switch: SwitchConfig = SwitchConfig()
    array: ArrayConfig = ArrayConfig()
    frame_rate_hz: Annotated[float, Field(gt=0.0, le=1000.0)] = 10.0


#: Farthest a configured principal point may lie from the image centre, as a share of the image's
#: width (cx) and height (cy).
PRINCIPAL_OFF_CENTRE_MAX = 0.15


class CameraConfig(Section):
    """The RGB camera (OpenCV). `device` is an index, a path or a stream URL."""

    device: str = "0"
    width: Annotated[int, Field(ge=16, le=7680)] = 1280
    height: Annotated[int, Field(ge=16, le=4320)] = 720
    fps: Annotated[float, Field(gt=0.0, le=240.0)] = 30.0
    #: Horizontal field of view, used by the simulator and before calibration exists.
    hfov_deg: Annotated[float, Field(gt=10.0, lt=170.0)] = 90.0
    position_m: tuple[float, float, float] = (0.0, 0.0, 1.6)
    #: Downward tilt of the optical axis (`vrclip-calibrate camera` measures it with the rest).
    pitch_deg: Annotated[float, Field(ge=-60.0, le=80.0)] = 8.0
    #: Turn about z from +y, counter-clockwise seen from above (as `radar.array.yaw_deg`).
    yaw_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = 0.0
    #: Principal point (cx, cy) in pixels, OpenCV's convention (pixel centres at whole numbers);
    #: unset: the image centre. `vrclip-calibrate intrinsics` measures it with the distortion.
    principal_px: tuple[float, float] | None = None
    #: OpenCV's lens distortion (k1, k2, p1, p2, k3); zeros: a distortion-free lens.
    distortion: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    #: How much later the camera stamps a frame than the radar stamps the same instant (ms): the
    #: camera's exposure, transfer and driver queue, against the radar's frame stamp. Subtracted
    #: from every camera frame's time, so each radar frame is paired with the image of the same
    #: moment and the crop is cut where the person was. `vrclip-calibrate camera` measures it.
    latency_ms: Annotated[float, Field(ge=-500.0, le=2000.0)] = 0.0

    @field_validator("distortion", mode="before")
    @classmethod
    def _four_coefficients_mean_no_k3(cls, value: Any) -> Any:
        """OpenCV tools often print four coefficients (k1, k2, p1, p2): k3 is then 0."""
        if isinstance(value, list | tuple) and len(value) == 4:
            return (*value, 0.0)
        return value

    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 90

    @model_validator(mode="after")
    def _intrinsics_in_range(self) -> CameraConfig:
        if self.principal_px is not None:
            cx, cy = self.principal_px
            # A lens's principal point lies within a few percent of the image centre. One measured at
            # another resolution (camera.width/height changed since) lands a sixth of the image or
            # more away from it, and would shift every crop by that much.
            off_x = abs(cx - (self.width - 1) / 2) / self.width
            off_y = abs(cy - (self.height - 1) / 2) / self.height
            if max(off_x, off_y) > PRINCIPAL_OFF_CENTRE_MAX:
                raise ValueError(
                    f"camera.principal_px = [{cx:g}, {cy:g}] is {max(off_x, off_y):.0%} of the "
                    f"{self.width}x{self.height} image from its centre (at most "
                    f"{PRINCIPAL_OFF_CENTRE_MAX:.0%}): was it measured with camera.width x camera.height "
                    "set otherwise? Measure the lens again at this size with `vrclip-calibrate "
                    "intrinsics`, or leave principal_px unset"
                )
        if any(abs(c) > 10.0 for c in self.distortion):
            raise ValueError(
                f"camera.distortion = {list(self.distortion)}: coefficients beyond +-10 are not a lens; "
                "measure them with `vrclip-calibrate intrinsics`"
            )
        return self


class ZedConfig(Section):
    """The ZED stereo camera: depth image and per-person floor positions."""

    enabled: bool = True
    serial: Annotated[int, Field(ge=0)] = 0
    depth_width: Annotated[int, Field(ge=16, le=4416)] = 320
    depth_height: Annotated[int, Field(ge=16, le=2484)] = 180
    fps: Annotated[float, Field(gt=0.0, le=120.0)] = 15.0
    max_depth_m: Annotated[float, Field(gt=0.3, le=40.0)] = 10.0
    position_m: tuple[float, float, float] = (0.2, 0.0, 1.6)


class TimeServerConfig(Section):
    """The rig's start protocol (`vrclip-edge timebase serve/wait --config`; their options override)."""

    #: The address devices dial (`timebase wait`); `timebase serve` listens on all interfaces unless --host.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_TIME_SERVER_PORT
    #: Seconds between arming and the start instant: covers delivering the start to every device.
    start_lead_s: Annotated[float, Field(ge=0.05, le=60.0)] = 2.0


class SyncConfig(Section):
    #: The clock the time server's start instant is on (`timebase serve`); CLOCK_MONOTONIC only works
    #: when every device runs on the server's host.
    clock: Literal["CLOCK_REALTIME", "CLOCK_MONOTONIC"] = "CLOCK_REALTIME"
    #: Frames of different sensors pair only if their timestamps differ by at most this.
    slop_ms: Annotated[float, Field(gt=0.0, le=5000.0)] = 60.0
    time_server: TimeServerConfig = TimeServerConfig()


class RoomConfig(Section):
    """The monitored floor area in room coordinates (metres); the imaging grid spans it."""

    x_min_m: Annotated[float, Field(ge=-100.0, le=100.0)] = -2.5
    x_max_m: Annotated[float, Field(ge=-100.0, le=100.0)] = 2.5
    y_min_m: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    y_max_m: Annotated[float, Field(ge=0.0, le=100.0)] = 6.5

    @model_validator(mode="after")
    def _non_empty(self) -> RoomConfig:
        if self.x_max_m <= self.x_min_m:
            raise ValueError(f"room.x_max_m = {self.x_max_m} must be above room.x_min_m = {self.x_min_m}")
        if self.y_max_m <= self.y_min_m:
            raise ValueError(f"room.y_max_m = {self.y_max_m} must be above room.y_min_m = {self.y_min_m}")
        return self


class ImagingConfig(Section):
    nx: Annotated[int, Field(ge=8, le=2048)] = 128
    ny: Annotated[int, Field(ge=8, le=2048)] = 128
    mode: Literal["2d", "3d"] = "2d"
    #: Height of the 2D image plane (metres): torso height keeps a walking person in focus.
    height_m: Annotated[float, Field(ge=0.0, le=3.0)] = 1.2
    #: Heights of the 3D grid's slices (metres); used only in 3D mode.
    z_levels_m: tuple[float, ...] = (0.4, 0.8, 1.2, 1.6)
    impl: Literal["auto", "gpu", "cpu", "exact"] = "auto"
    clutter: Literal["mean", "mti", "none"] = "mean"
    #: Weight of the newest frame in the running-mean background.
    background_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    #: IFFT length as a multiple of the number of sweep points (CPU imagers: their cost grows with it).
    zero_pad_factor: Annotated[int, Field(ge=1, le=64)] = 8
    #: The same for the GPU imager: finer profiles cost it next to nothing (0.10 ms a frame at 32 vs
    #: 0.12 ms at 8 on an H200) and take its interpolation error from ~3e-4 to ~2e-5 of the exact sum.
    gpu_zero_pad_factor: Annotated[int, Field(ge=1, le=64)] = 32
    cfar_threshold_db: Annotated[float, Field(ge=0.0, le=60.0)] = 12.0
    max_people: Annotated[int, Field(ge=1, le=64)] = 8

    @model_validator(mode="after")
    def _3d_has_levels(self) -> ImagingConfig:
        if self.mode == "3d" and not self.z_levels_m:
            raise ValueError(
                'imaging.z_levels_m = []: imaging.mode = "3d" needs at least one height (metres); '
                'list them, e.g. z_levels_m = [0.4, 0.8, 1.2, 1.6], or use mode = "2d"'
            )
        return self


class EngineConfig(Section):
    """The fused VRCLIP engine package: `<name>.engine|.onnx` beside its `<name>.json` manifest."""

    path: str = "/var/lib/vrclip/engines/vrclip.onnx"
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    rf_frames: Annotated[int, Field(ge=1, le=256)] = 8


class GalleryConfig(Section):
    path: str = "/var/lib/vrclip/gallery.sqlite"
    #: Cosine similarity below which a track is reported as "unknown" (open set). It depends on the
    #: model, so by default (unset) it is the engine manifest's `open_set.threshold`, which
    #: `vrclip-export evaluate` estimates and `vrclip-export onnx --threshold-from` records; an engine
    #: without one gets `FALLBACK_THRESHOLD`. Set it to override for a site: `vrclip-edge bench
    #: pipeline` sweeps it on the simulated rig and suggests one.
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    #: Most exemplars kept per identity; when full, the most redundant one is replaced.
    exemplar_budget: Annotated[int, Field(ge=1, le=1024)] = 32
    #: Where `vrclip-edge run` keeps daily copies of the gallery (months of enrolment on an SD card
    #: that a power cut can damage); empty: none.
    backup_dir: str = "/var/lib/vrclip/gallery-backups"
    #: Copies kept (the oldest is removed).
    backup_keep: Annotated[int, Field(ge=1, le=365)] = 7


class MqttSinkConfig(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic: str = "vrclip/identity"
    #: Events kept while the broker is unreachable; the oldest is dropped when full.
    outbox: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    client_id: str = ""
    #: Broker login; empty: connect anonymously.
    username: str = ""
    #: A file holding the password (its first line), so the password stays out of this config, which
    #: installers copy around: e.g. /etc/vrclip/mqtt-password, mode 0640, group vrclip.
    password_file: str = ""
    #: Connect over TLS, checking the broker's certificate and host name (usually port 8883).
    tls: bool = False
    #: CA certificate(s) (PEM) that signed the broker's certificate; empty: the system's CAs.
    ca_file: str = ""
    #: Client certificate and key (PEM) for brokers that require one; key_file may be empty when the
    #: certificate file holds the key too.
    cert_file: str = ""
    key_file: str = ""

    @model_validator(mode="after")
    def _publishable_topic(self) -> MqttSinkConfig:
        # Checked only when enabled: a disabled sink's topic is never used.
        if self.enabled and (not self.topic or any(ch in self.topic for ch in "+#\0")):
            raise ValueError(
                f"sinks.mqtt.topic = {self.topic!r}: an MQTT topic to publish on must be non-empty and "
                'without the wildcards + and # (and NUL), e.g. topic = "vrclip/identity"'
            )
        return self

    @model_validator(mode="after")
    def _consistent_security(self) -> MqttSinkConfig:
        """Keys that would be silently ignored are mistakes: a password with no user name, or
        certificates with TLS off, would connect without what the installer meant to use."""
        if self.password_file and not self.username:
            raise ValueError(
                f"sinks.mqtt.password_file = {self.password_file!r} needs sinks.mqtt.username: set the "
                "user name the password belongs to"
            )
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) and not self.tls:
                raise ValueError(
                    f"sinks.mqtt.{key} = {getattr(self, key)!r} is used only over TLS: set "
                    "sinks.mqtt.tls = true (and the broker's TLS port, usually 8883)"
                )
        if self.key_file and not self.cert_file:
            raise ValueError(
                f"sinks.mqtt.key_file = {self.key_file!r} needs sinks.mqtt.cert_file, the client "
                "certificate that key belongs to"
            )
        return self


class HttpSinkConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080


class SinksConfig(Section):
    jsonl_path: str = "/var/log/vrclip/events.jsonl"
    #: Rotate the JSON-lines file at this size; keep this many rotated files (0 = just truncate).
    jsonl_max_bytes: Annotated[int, Field(ge=4096, le=100_000_000_000)] = 50_000_000
    jsonl_keep: Annotated[int, Field(ge=0, le=1000)] = 5
    mqtt: MqttSinkConfig = MqttSinkConfig()
    http: HttpSinkConfig = HttpSinkConfig()


#: Longest path a Unix socket can be bound at (sun_path is 108 bytes, NUL included).
MAX_SOCKET_PATH_BYTES = 107


#: What an empty paths.calibration_file is told. It is refused where the real rig reads the file
#: (`run`, the self-test, the calibration wizard; read as the current folder it failed with "Is a
#: directory", naming no key) and warned about by `config check`, not when a config is parsed: the
#: simulated rig never reads it, and the config stored in every recording is parsed again to replay,
#: label and train on it.
EMPTY_CALIBRATION_FILE = (
    'paths.calibration_file = "": name the radar calibration file, e.g. "/etc/vrclip/calibration.json" '
    "(`vrclip-calibrate channels` writes it)"
)


class PathsConfig(Section):
    data_dir: str = "/var/lib/vrclip"
    recordings_dir: str = "/var/lib/vrclip/recordings"
    calibration_file: str = "/etc/vrclip/calibration.json"
    #: Where `vrclip-edge run` listens for local commands (`vrclip-edge enroll --service`); empty: no
    #: control socket. The service's RuntimeDirectory (/run/vrclip) holds it.
    control_socket: str = "/run/vrclip/control.sock"

    @field_validator("control_socket")
    @classmethod
    def _socket_path_fits(cls, value: str) -> str:
        if len(value.encode("utf-8")) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"paths.control_socket {value[:40]!r}... is {len(value.encode('utf-8'))} bytes; a Unix "
                f'socket path holds at most {MAX_SOCKET_PATH_BYTES}: choose a shorter path, or "" for none'
            )
        return value


class EdgeConfig(Section):
    """The whole system. Every key has a default; a file only states what differs on its site."""

    radar: RadarConfig = RadarConfig()
    camera: CameraConfig = CameraConfig()
    zed: ZedConfig = ZedConfig()
    sync: SyncConfig = SyncConfig()
    room: RoomConfig = RoomConfig()
    imaging: ImagingConfig = ImagingConfig()
    engine: EngineConfig = EngineConfig()
    gallery: GalleryConfig = GalleryConfig()
    sinks: SinksConfig = SinksConfig()
    paths: PathsConfig = PathsConfig()


def _field_range(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """Walk the schema along `loc` and describe the numeric bounds of the field it ends on."""
    current: Any = model
    info = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = info.annotation
    if info is None:
        return None
    lo = hi = None
    lo_incl = hi_incl = True
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            lo = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            lo, lo_incl = meta.gt, False
        elif isinstance(meta, annotated_types.Le):
            hi = meta.le
        elif isinstance(meta, annotated_types.Lt):
            hi, hi_incl = meta.lt, False
    if lo is None and hi is None:
        return None
    left = "[" if lo_incl else "("
    right = "]" if hi_incl else ")"
    return f"allowed range {left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"


def _key_of(loc: tuple[Any, ...]) -> str:
    """("camera", "position_m", 0) -> "camera.position_m[0]": the key as the TOML file spells it."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _describe_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = _key_of(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1])
        allowed = _allowed_keys(loc[:-1])
        where = f" in [{parent}]" if parent else " at the top level"
        return f"unknown key '{loc[-1]}'{where}; allowed keys: {', '.join(allowed)}"
    value = err.get("input")
    message = err["msg"]
    if kind.startswith("value_error"):
        # Our own cross-field checks already name the keys and values.
        return message.removeprefix("Value error, ")
    text = f"{key} = {value!r}: {message}"
    bounds = _field_range(EdgeConfig, loc)
    if bounds and kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        text += f" ({bounds})"
    return text


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    current: Any = EdgeConfig
    for part in loc:
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = info.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def parse_config(data: dict[str, Any], source: str = "<config>") -> EdgeConfig:
    """Validate an already-parsed TOML mapping; raise ConfigError listing every problem, one per line."""
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe_error(e) for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_config(path: str | Path | None) -> EdgeConfig:
    """Load and validate a config file; None gives the built-in defaults."""
    if path is None:
        return EdgeConfig()
    path = Path(path)
    try:
        text = read_text_capped(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (write one with `vrclip-edge config show > {path}`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def config_to_toml(config: EdgeConfig) -> str:
    """The effective config as TOML, every key spelled out (what `config show` prints).

    Keys left unset (None: `gallery.threshold`, which then comes from the engine) are left out:
    TOML has no null.
    """
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
