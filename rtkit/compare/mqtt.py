"""MQTT for the comparison: a real broker (rumqttd, shipped by the ``iotcore`` package) and
the reference client (Eclipse ``paho-mqtt``).

Both are development dependencies (``pip install 'rtkit[dev]'``), imported only when used:
``import rtkit.compare`` works without them. The broker runs in a child process (rumqttd
has no way to stop it in-process) that also ends when this process does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import TYPE_CHECKING, Any

from rtkit import _rerun
from rtkit.compare.streams import Tally

if TYPE_CHECKING:
    import iotcore
    import paho.mqtt.client as paho

_MISSING = ("{name} is not installed: it is a development dependency of rtkit, used to "
            "compare protocols (pip install 'rtkit[dev]', or pip install {name})")


def _paho() -> Any:
    try:
        import paho.mqtt.client
    except ImportError as exc:
        raise ModuleNotFoundError(_MISSING.format(name="paho-mqtt"), name="paho") from exc
    return paho.mqtt.client


class MqttBroker:
    """A running MQTT broker (rumqttd: MQTT 3.1.1 and 5) on loopback, open to anonymous
    clients. Made by :func:`mqtt_broker`."""

    def __init__(self, broker: iotcore.Broker, host: str, port: int) -> None:
        self._broker = broker
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return bool(self._broker.is_running)

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and stop the broker. Safe to call twice."""
        self._broker.stop(timeout)

    def __enter__(self) -> MqttBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<rtkit.compare.MqttBroker {self.url} {'running' if self.running else 'stopped'}>"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mqtt_broker(host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> MqttBroker:
    """Start an MQTT broker on ``host``:``port`` (0: a free port) and return once it
    listens. Re-running the notebook cell that made one stops the old one."""
    try:
        from iotcore import Broker
    except ImportError as exc:
        raise ModuleNotFoundError(_MISSING.format(name="iotcore"), name="iotcore") from exc
    for attempt in range(3):
        chosen = port or _free_port(host)
        broker = Broker(port=chosen, listen=host)
        try:
            broker.start(timeout)
        except OSError:  # taken since we looked (only retried when we chose the port)
            if port or attempt == 2:
                raise
            continue
        handle = MqttBroker(broker, host, chosen)
        _rerun.replace_previous("mqtt broker", handle, MqttBroker.stop)
        return handle
    raise AssertionError("unreachable")  # pragma: no cover


class MqttClient:
    """A paho-mqtt client (MQTT 3.1.1) driven by paho's network thread; its events are
    handed to the asyncio loop that called :meth:`connect`."""

    def __init__(self, client_id: str) -> None:
        mqtt = _paho()
        self.paho: paho.Client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                             client_id=client_id, protocol=mqtt.MQTTv311)
        self._started = False

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
            loop.call_soon_threadsafe(_settle, ready, reason)

        self.paho.on_connect = on_connect
        await asyncio.to_thread(self.paho.connect, host, port)
        self.paho.loop_start()
        self._started = True
        async with asyncio.timeout(timeout):
            reason = await ready
        if reason.is_failure:
            raise ConnectionError(f"the MQTT broker refused the connection: {reason}")

    async def subscribe(self, topic: str, qos: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[Any] = loop.create_future()

        def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any,
                         properties: Any) -> None:
            loop.call_soon_threadsafe(_settle, granted, reasons)

        self.paho.on_subscribe = on_subscribe
        self.paho.subscribe(topic, qos=qos)
        async with asyncio.timeout(timeout):
            reasons = await granted
        if any(r.is_failure for r in reasons):
            raise ConnectionError(f"the MQTT broker refused the subscription: {reasons}")

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Queue a publish (paho's thread sends it)."""
        self.paho.publish(topic, payload, qos=qos)

    async def close(self) -> None:
        if self._started:
            self._started = False
            self.paho.disconnect()
            await asyncio.to_thread(self.paho.loop_stop)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class MqttReceiver:
    """A paho-mqtt client subscribed to ``topic`` with ``qos``. Arrival times are taken in
    paho's thread, as each message is decoded."""

    def __init__(self, host: str, port: int, topic: str, qos: int) -> None:
        self.tally = Tally()
        self.polls = 0
        self._where = (host, port)
        self._topic, self._qos = topic, qos
        self.client = MqttClient("compare-mqtt")

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        tally = self.tally

        def on_message(client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
            now = time.time()
            try:
                data = json.loads(message.payload)
            except ValueError:
                return
            loop.call_soon_threadsafe(tally.note, data, now)

        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any,
                          properties: Any) -> None:
            if reason.is_failure:
                error = ConnectionError(f"the MQTT connection ended: {reason}")
                loop.call_soon_threadsafe(tally.fail, error)

        self.client.paho.on_message = on_message
        self.client.paho.on_disconnect = on_disconnect
        await self.client.connect(*self._where)
        await self.client.subscribe(self._topic, self._qos)

    async def close(self) -> None:
        self.client.paho.on_disconnect = None
        await self.client.close()
