"""Switch-matrix client <-> simulated controller (docs/switch_protocol.md), over TCP and over pyserial."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.errors import (
    RadarSetupError,
    SwitchConnectionError,
    SwitchProtocolError,
    SwitchReplyError,
    SwitchSelfTestError,
    SwitchSetupError,
    SwitchTimeoutError,
)
from vrclip.edge.radar.simulated import SimulatedRadar
from vrclip.edge.radar.switch import SwitchClient, parse_tcp_url
from vrclip.edge.radar.switch_protocol import (
    MAX_LINE_BYTES,
    MAX_SEQUENCE,
    PROTOCOL_VERSION,
    ErrCode,
    ProtocolViolation,
    format_sequence,
    parse_sequence,
)


@pytest.fixture(scope="module")
def radar():
    sim = SimulatedRadar(with_vna=False).start()
    yield sim
    sim.stop()


@pytest.fixture
def client(radar: SimulatedRadar):
    radar.front_end.self_test_fault = None
    with SwitchClient(radar.switch_url, timeout_ms=1000) as c:
        yield c


def test_identity_size_and_self_test(client: SwitchClient) -> None:
    assert client.version == PROTOCOL_VERSION
    assert client.size() == (12, 12)
    client.self_test()


def test_select_drives_the_shared_front_end(radar: SimulatedRadar, client: SwitchClient) -> None:
    client.select(3, 9)
    assert radar.front_end.selected == (3, 9)
    assert radar.front_end.channel == 3 * 12 + 9
    assert client.selected() == (3, 9)


def test_sequence_steps_in_order_and_wraps(client: SwitchClient) -> None:
    pairs = [(0, 1), (2, 3), (11, 0)]
    client.upload_sequence(pairs)
    assert [client.next() for _ in range(4)] == [*pairs, pairs[0]]


def test_pipelined_next(client: SwitchClient) -> None:
    client.upload_sequence([(1, 1), (2, 2)])
    client.send_next()
    client.send_next()
    assert client.receive_next() == (1, 1)
    assert client.receive_next() == (2, 2)


def test_full_geometry_sequence_fits_one_line(client: SwitchClient) -> None:
    pairs = load_geometry().pairs
    client.upload_sequence(pairs)
    assert [client.next() for _ in range(len(pairs))] == [tuple(p) for p in pairs.tolist()]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("SEL 12 0", ErrCode.OUT_OF_RANGE),
        ("SEL 1", ErrCode.BAD_ARGUMENT),
        ("SEL a b", ErrCode.BAD_ARGUMENT),
        ("FROB", ErrCode.UNKNOWN_COMMAND),
        ("VER? 2", ErrCode.BAD_ARGUMENT),
        ("SEQ 2 0,0", ErrCode.BAD_ARGUMENT),
        ("SEQ 1 0,12", ErrCode.OUT_OF_RANGE),
        (f"SEQ {MAX_SEQUENCE + 1} 0,0", ErrCode.SEQUENCE_TOO_LONG),
    ],
)
def test_error_replies_raise_with_port_command_and_code(
    radar: SimulatedRadar, client: SwitchClient, command, code
):
    with pytest.raises(SwitchReplyError) as info:
        client.request(command)
    assert info.value.code == code and info.value.command == command
    assert radar.switch_url in str(info.value) and f"ERR {int(code)}" in str(info.value)
    assert client.connected  # an ERR reply leaves the stream in step
    assert client.size() == (12, 12)


def test_next_without_sequence(radar: SimulatedRadar) -> None:
    with SwitchClient(radar.switch_url) as fresh:
        radar.state.switch.sequence = []
        with pytest.raises(SwitchReplyError, match="ERR 104"):
            fresh.next()


def test_self_test_failure_and_hardware_fault(radar: SimulatedRadar, client: SwitchClient) -> None:
    radar.front_end.self_test_fault = "Rx7 relay open"
    try:
        with pytest.raises(SwitchSelfTestError, match="self-test failed: Rx7 relay open") as info:
            client.self_test()
        assert info.value.command == "TEST?"
        with pytest.raises(SwitchReplyError, match="ERR 200 relay driver fault"):
            client.select(0, 0)
    finally:
        radar.front_end.self_test_fault = None


def test_overlong_line_is_rejected_and_the_link_survives(radar: SimulatedRadar) -> None:
    with socket.create_connection(("127.0.0.1", radar.switch_port), timeout=5) as sock:
        f = sock.makefile("rwb")
        f.write(b"X" * (3 * MAX_LINE_BYTES) + b"\nVER?\n")
        f.flush()
        assert f.readline().startswith(b"ERR 103 ")
        assert f.readline() == f"VER {PROTOCOL_VERSION}\n".encode()


def test_serial_transport_same_framing(radar: SimulatedRadar) -> None:
    """pyserial's socket:// URL exercises the serial code path against the same controller."""
    with SwitchClient(f"socket://127.0.0.1:{radar.switch_port}", timeout_ms=1000) as serial_client:
        assert serial_client.version == PROTOCOL_VERSION
        serial_client.select(5, 6)
        assert radar.front_end.selected == (5, 6)
        with pytest.raises(SwitchReplyError, match="ERR 102"):
            serial_client.select(0, 99)


def test_prepare_checks_the_matrix_size(radar: SimulatedRadar, client: SwitchClient) -> None:
    client.prepare(load_geometry().pairs)
    assert radar.state.switch.sequence[:2] == [(0, 0), (0, 1)]
    too_big = np.array([[0, 0], [12, 3]])
    with pytest.raises(SwitchSetupError, match="needs 13 x 4"):
        client.prepare(too_big)


class _FakeController:
    """A TCP peer that answers every line with a fixed reply (or nothing)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    _, buf = buf.split(b"\n", 1)
                    if self.reply is not None:
                        conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("reply", "error", "pattern"),
    [
        (None, SwitchTimeoutError, "no reply within 200 ms"),
        (b"VER 2.0.0\n", SwitchSetupError, "controller speaks protocol 2.0.0"),
        (b"HELLO\n", SwitchProtocolError, "expected 'VER <major>.<minor>.<patch>'"),
        (b"ERR 7\n", SwitchReplyError, "ERR 7"),
        (b"ERR x y\n", SwitchProtocolError, "malformed error reply"),
        (b"Z" * (MAX_LINE_BYTES + 10), SwitchProtocolError, "reply longer than"),
        # Terminated, but longer than the protocol allows: accepted before when it came in one read.
        (b"Z" * (MAX_LINE_BYTES + 10) + b"\n", SwitchProtocolError, "reply longer than"),
    ],
)
def test_misbehaving_controller(reply, error, pattern) -> None:
    fake = _FakeController(reply)
    try:
        client = SwitchClient(fake.url, timeout_ms=200)
        with pytest.raises(error, match=pattern) as info:
            client.connect()
        assert info.value.command == "VER?" and fake.url in str(info.value)
        if error is SwitchSetupError:
            assert isinstance(info.value, RadarSetupError)
    finally:
        fake.close()


def test_unreachable_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
        with pytest.raises(SwitchConnectionError, match="cannot open"):
            SwitchClient(url).connect()


def test_bad_port_strings() -> None:
    assert parse_tcp_url("tcp://[::1]:5026") == ("::1", 5026)
    assert parse_tcp_url("/dev/ttyUSB0") is None
    with pytest.raises(SwitchSetupError, match=r"radar\.switch\.port"):
        SwitchClient("tcp://host-without-port").connect()
    with pytest.raises(SwitchConnectionError, match="/dev/does-not-exist"):
        SwitchClient("/dev/does-not-exist").connect()


def test_sequence_codec_round_trip_and_limits() -> None:
    pairs = [(0, 0), (11, 3), (4, 11)]
    line = format_sequence(pairs)
    assert line == "SEQ 3 0,0;11,3;4,11"
    count, body = line.split(" ", 2)[1:]
    assert parse_sequence(count, body, 12, 12) == pairs
    with pytest.raises(ProtocolViolation) as info:
        parse_sequence("3", body, 12, 4)
    assert info.value.code == ErrCode.OUT_OF_RANGE
    with pytest.raises(ProtocolViolation):
        format_sequence([])
    assert len(format_sequence([(63, 63)] * MAX_SEQUENCE)) + 1 <= MAX_LINE_BYTES


def test_armed_controller_steps_on_trigger_pulses(radar: SimulatedRadar, client: SwitchClient) -> None:
    """Protocol 1.3: ARM, step per pulse at STEP IN, POS? counts, SEL/NEXT refused until DISARM or SEQ."""
    pairs = [(0, 1), (2, 3), (11, 0)]
    client.upload_sequence(pairs)
    assert client.arm() == pairs[0] and radar.front_end.selected == pairs[0]
    assert client.position() == (0, 0)
    for expected in [pairs[1], pairs[2], pairs[0], pairs[1]]:
        radar.front_end.trigger_pulse()  # the VNA's sweep-end pulse
        assert radar.front_end.selected == expected
    assert client.position() == (1, 4)
    with pytest.raises(SwitchReplyError, match=r"ERR 106.*while armed") as info:
        client.next()
    assert info.value.code == ErrCode.ARM_STATE
    with pytest.raises(SwitchReplyError, match="ERR 106"):
        client.select(0, 0)
    client.disarm()
    radar.front_end.trigger_pulse()  # disarmed: pulses are ignored
    assert radar.front_end.selected == pairs[1]
    with pytest.raises(SwitchReplyError, match="ERR 106 not armed"):
        client.position()
    client.upload_sequence(pairs)  # SEQ also disarms
    assert client.next() == pairs[0]


def test_arm_needs_a_sequence_and_a_1_3_controller(radar: SimulatedRadar) -> None:
    radar.state.switch.sequence = []
    with SwitchClient(radar.switch_url, timeout_ms=1000) as c:
        with pytest.raises(SwitchReplyError, match="ERR 104"):
            c.arm()
        c.version = "1.2.0"  # what an older controller reports
        with pytest.raises(SwitchSetupError, match=r"hardware stepping needs 1\.3.*step = 'command'"):
            c.arm()
