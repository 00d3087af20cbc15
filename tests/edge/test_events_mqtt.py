"""The MQTT sink against a real mosquitto broker on loopback, started (and stopped) by the tests.

The broker keeps sessions on disk (persistence) so a subscriber's QoS 1 session survives a broker
restart: that lets a test take the broker away, emit while it is gone, bring it back, and then see
exactly which events were delivered, with no race against the sink's reconnect timer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from vrclip.edge.errors import ConfigError
from vrclip.edge.events import IdentityEvent, LiveModalities, MqttSink

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto broker not found (Debian: apt-get install -y mosquitto)"
)
TOPIC = "vrclip/test/identity"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, folder: Path, anonymous: bool = True, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", *extra, f"allow_anonymous {str(anonymous).lower()}",
                 "persistence true",
                 f"persistence_location {folder}/"]  # fmt: skip
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to user 'mosquitto', who cannot write our tmp dir
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    pytest.fail(f"mosquitto exited: {out}")
                time.sleep(0.02)
        pytest.fail("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # graceful: it saves the persistent sessions
            self.proc.communicate(timeout=10)
        self.proc = None


class Subscriber:
    """A QoS 1 subscriber with a persistent session (clean_session=False)."""

    def __init__(self, port: int, login: tuple[str, str] | None = None, ca_file: Path | None = None) -> None:
        self.port = port
        self.payloads: list[bytes] = []
        self.qos: list[int] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub", clean_session=False)
        if login is not None:
            self.client.username_pw_set(*login)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.payloads.append(message.payload)
            self.qos.append(message.qos)

    def connect(self, subscribe: bool = True) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe(TOPIC, qos=1)
            assert self._subscribed.wait(5)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def track_ids(self, count: int, timeout: float = 5.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.payloads) >= count:
                    break
            time.sleep(0.02)
        with self._lock:
            return [IdentityEvent.from_json(p).track_id for p in self.payloads]


def wait_until(condition, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll `condition` until it holds or `timeout` passes: a loaded 2-core CI box may take seconds
    to start the broker or to make a TLS handshake, so no test waits a fixed time instead."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def event(i: int) -> IdentityEvent:
    return IdentityEvent(1_700_000_000_000_000_000 + i, i, "alice", 0.9, (1.0, 2.0), 1.2,
                         LiveModalities(True, True, False))  # fmt: skip


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def sink_for(broker: Broker, **kw) -> MqttSink:
    return MqttSink("127.0.0.1", broker.port, TOPIC, reconnect_min_s=0.1, reconnect_max_s=0.4, **kw)


def test_events_reach_a_subscriber_in_order_at_qos1(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    sub.connect()
    sink = sink_for(broker, window=8)
    for i in range(40):
        sink.emit(event(i))
    assert sink.flush(10), sink.stats()
    assert sub.track_ids(40) == list(range(40))
    assert set(sub.qos) == {1}
    assert json.loads(sub.payloads[0])["identity"] == "alice"
    stats = sink.stats()
    assert stats["published"] == 40 and stats["dropped"] == 0 and stats["connected"]
    sink.close()
    sub.disconnect()


def test_outbox_drops_oldest_while_broker_is_down_then_delivers(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    sub.connect()
    sub.disconnect()  # the broker now queues QoS 1 messages for it
    broker.stop()
    sink = sink_for(broker, outbox=5)
    slowest = 0.0
    for i in range(12):
        started = time.perf_counter()
        sink.emit(event(i))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05  # never waits for the missing broker
    stats = sink.stats()
    assert stats["dropped"] == 7 and stats["queued"] == 5 and not stats["connected"]
    broker.start()
    assert sink.flush(10), sink.stats()
    sub.connect(subscribe=False)
    assert sub.track_ids(5) == [7, 8, 9, 10, 11]  # the newest five survived
    sink.close()
    sub.disconnect()


def test_reconnects_in_the_background_after_a_broker_restart(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    sub.connect()
    sink = sink_for(broker)
    for i in range(3):
        sink.emit(event(i))
    assert sink.flush(10)
    sub.disconnect()
    broker.stop()
    deadline = time.monotonic() + 5
    while sink.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sink.connected and sink.stats()["disconnects"] == 1
    for i in range(3, 6):
        sink.emit(event(i))
    broker.start()
    assert sink.flush(10), sink.stats()
    assert sink.stats()["connects"] == 2
    sub.connect(subscribe=False)
    assert sorted(set(sub.track_ids(6))) == list(range(6))  # at least once, nothing lost
    sink.close()
    sub.disconnect()


def test_a_broker_that_refuses_the_connection_says_so_in_the_stats(tmp_path: Path) -> None:
    """A broker that answers CONNACK "not authorized" must be told apart from one that drops the
    line: the refusal is what an operator reads in /status to fix the broker's listener."""
    refusing = Broker(tmp_path, anonymous=False)
    refusing.start()
    sink = sink_for(refusing)
    try:
        assert wait_until(lambda: sink.stats()["last_error"]), "no connection attempt was answered"
        seen = set()
        for _ in range(10):
            seen.add(sink.stats()["last_error"])
            time.sleep(0.05)
        assert sink.stats()["connects"] == 0
        assert all("refused" in error and "not authori" in error.lower() for error in seen), seen
    finally:
        sink.close()
        refusing.stop()


def test_bad_topic_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.topic"):
        MqttSink("127.0.0.1", 1883, "vrclip/#")


OPENSSL = shutil.which("openssl")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def mqtt_config(port: int, **mqtt_keys: object):  # type: ignore[no-untyped-def]
    from vrclip.edge.config import EdgeConfig, parse_config

    data = EdgeConfig().model_dump(mode="json")
    data["sinks"]["jsonl_path"] = ""
    data["sinks"]["mqtt"].update(enabled=True, host="127.0.0.1", port=port, topic=TOPIC, **mqtt_keys)
    return parse_config(data, source="test").sinks


def deliver_three(sinks, sub: Subscriber) -> list[int]:  # type: ignore[no-untyped-def]
    (sink,) = sinks.sinks
    sink.client.reconnect_delay_set(0.1, 0.4)
    try:
        for i in range(3):
            sinks.emit(event(i))
        return sub.track_ids(3, timeout=15.0)
    finally:
        sinks.close()
        sub.disconnect()


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd not found (it comes with mosquitto)")
def test_a_broker_that_requires_a_login_gets_it_from_the_password_file(tmp_path: Path) -> None:
    """Site brokers rarely allow anonymous clients: the sink logs in with sinks.mqtt.username and the
    first line of sinks.mqtt.password_file, so the password is never in the site config."""
    from vrclip.edge.events import build_sinks

    passwords = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwords), "edge", "s3cret word"], check=True)
    passwords.chmod(0o600)
    broker = Broker(tmp_path, anonymous=False, extra=(f"password_file {passwords}",))
    broker.start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret word\n")
        sub = Subscriber(broker.port, login=("edge", "s3cret word"))
        sub.connect()
        sinks = build_sinks(mqtt_config(broker.port, username="edge", password_file=str(secret)))
        assert deliver_three(sinks, sub) == [0, 1, 2]
    finally:
        broker.stop()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, its key), made with the openssl CLI."""
    assert OPENSSL is not None
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=vrclip test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca, cert, key


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is needed to make test certificates")
def test_tls_to_a_broker_whose_certificate_the_site_ca_signed(tmp_path: Path) -> None:
    """sinks.mqtt.tls checks the broker's certificate against sinks.mqtt.ca_file (and its host name);
    the same sink without the site's CA does not connect: it does not trust an unknown certificate."""
    from vrclip.edge.events import build_sinks

    ca, cert, key = make_certificates(tmp_path)
    broker = Broker(tmp_path, extra=(f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"))
    broker.start()
    try:
        untrusting = build_sinks(mqtt_config(broker.port, tls=True))
        (sink,) = untrusting.sinks
        sink.client.reconnect_delay_set(0.1, 0.4)
        assert wait_until(lambda: "sinks.mqtt.ca_file" in sink.stats()["last_error"]), sink.stats()
        assert sink.stats()["connects"] == 0
        untrusting.close()
        sub = Subscriber(broker.port, ca_file=ca)
        sub.connect()
        sinks = build_sinks(mqtt_config(broker.port, tls=True, ca_file=str(ca)))
        assert deliver_three(sinks, sub) == [0, 1, 2]
    finally:
        broker.stop()


def test_mqtt_login_and_tls_mistakes_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    from vrclip.edge.events import build_sinks
    from vrclip.edge.events.sinks import MqttTls, read_password_file

    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.password_file .* needs sinks\.mqtt\.username"):
        mqtt_config(1883, password_file="/etc/vrclip/mqtt-password")
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.ca_file .* only over TLS"):
        mqtt_config(1883, ca_file="/etc/vrclip/ca.pem")
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.key_file .* needs sinks\.mqtt\.cert_file"):
        mqtt_config(1883, tls=True, key_file="/etc/vrclip/client.key")
    missing = tmp_path / "nothing-here"
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.password_file = .*nothing-here.*cannot read it"):
        build_sinks(mqtt_config(1883, username="edge", password_file=str(missing)))
    bom = tmp_path / "bom"
    bom.write_bytes("\ufeffs3cret\r\n".encode())  # as a Windows editor saves it
    assert read_password_file(str(bom)) == "s3cret"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="first line is empty"):
        build_sinks(mqtt_config(1883, username="edge", password_file=str(empty)))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.ca_file = .*ca\.pem"):
        MqttTls(ca_file=str(not_pem)).apply(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2))
