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
    def __init__(self, folder: Path, anonymous: bool = True) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {str(anonymous).lower()}",
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

    def __init__(self, port: int) -> None:
        self.port = port
        self.payloads: list[bytes] = []
        self.qos: list[int] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub", clean_session=False)
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
        time.sleep(1.0)  # a few refused attempts (back-off 0.1 .. 0.4 s)
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
