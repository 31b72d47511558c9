"""Fixtures of the sensing tests: the real MQTT broker (Mosquitto on 127.0.0.1:1883, started
when it is not running) and unique MQTT names per test, whose sessions are dropped after it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import pytest

BROKER = ("127.0.0.1", 1883)
MOSQUITTO_CONF = "/etc/mosquitto/mosquitto.conf"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """(host, port) of a running Mosquitto; started as a daemon if nothing listens there."""
    host, port = BROKER
    if _listening(host, port):
        return host, port
    if shutil.which("mosquitto") is None:
        pytest.fail("Mosquitto is not installed (apt-get install mosquitto) and none is running")
    subprocess.run(["mosquitto", "-d", "-c", MOSQUITTO_CONF], check=True)
    deadline = time.monotonic() + 10
    while not _listening(host, port):
        if time.monotonic() > deadline:
            pytest.fail(f"mosquitto -d -c {MOSQUITTO_CONF} did not listen on {host}:{port}")
        time.sleep(0.05)
    return host, port


@dataclass
class MqttNames:
    """Names no other test (or process on the same broker) uses: a share group, a client-id
    prefix and a topic root; ``client_ids`` collects the ids whose sessions are dropped."""

    group: str
    client_prefix: str
    prefix: str
    client_ids: set[str] = field(default_factory=set)

    def options(self, **more: object) -> dict[str, object]:
        """Keyword arguments of ``MqttIngest`` with these names."""
        return {
            "group": self.group,
            "client_prefix": self.client_prefix,
            "prefix": self.prefix,
            **more,
        }


@pytest.fixture
def mqtt_names(mqtt_broker):
    from citytwin.sensing.mqtt import drop_sessions

    tag = uuid.uuid4().hex[:10]
    names = MqttNames(f"g{tag}", f"test-ingest-{tag}", f"test-{tag}/v1.1")
    yield names
    drop_sessions(
        sorted(names.client_ids | {f"{names.client_prefix}-{i}" for i in range(4)}),
        *mqtt_broker,
    )


@pytest.fixture
def private_broker(tmp_path):
    """(host, port) of a Mosquitto of this test's own, publishing its $SYS figures every
    second (the system broker's counters are shared with every other client and change only
    every 10 s)."""
    if shutil.which("mosquitto") is None:
        pytest.fail("Mosquitto is not installed (apt-get install mosquitto)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\npersistence false\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while not _listening("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"a private mosquitto did not listen on 127.0.0.1:{port}")
        time.sleep(0.05)
    yield "127.0.0.1", port
    proc.terminate()
    proc.wait(10)
