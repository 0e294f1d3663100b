"""One stream, several protocols, every one measured the same way (see :func:`measure`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from typing import Any

from rtkit.aio.client import Client
from rtkit.chaos.handle import FaultProxy, proxy
from rtkit.compare.mqtt import MqttBroker, MqttClient, MqttReceiver
from rtkit.compare.stats import Bytes, Comparison, ProtocolResult
from rtkit.compare.streams import PollingReceiver, Receiver, RtkitReceiver
from rtkit.server import Server

#: The protocols :func:`measure` knows, by the names its results use.
PROTOCOLS = ("HTTP polling", "SSE", "WebSocket", "MQTT")


def _counted(relay: FaultProxy) -> Bytes:
    stats = relay.stats()
    return Bytes(stats["bytes_up"], stats["bytes_down"])


def _check(n: int, rate: float, poll_every: float, idle: float, qos: int,
           protocols: tuple[str, ...], mqtt: MqttBroker | None) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1 message, not {n!r}")
    for name, value in (("rate", rate), ("poll_every", poll_every)):
        if not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number of seconds/messages, "
                             f"not {value!r}")
    if not idle >= 0 or math.isinf(idle):
        raise ValueError(f"idle must be >= 0 seconds, not {idle!r}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols or len(set(protocols)) != len(protocols):
        raise ValueError(f"protocols must be some of {PROTOCOLS}, each once: {protocols!r}")
    if "MQTT" in protocols and mqtt is None:
        raise ValueError("give mqtt=rtkit.compare.mqtt_broker() to measure MQTT")


async def measure(server: Server, mqtt: MqttBroker | None = None, *, n: int = 60,
                  rate: float = 20.0, poll_every: float = 0.1, idle: float = 1.0,
                  channel: str = "compare", qos: int = 1,
                  protocols: tuple[str, ...] = PROTOCOLS,
                  timeout: float = 10.0) -> Comparison:
    """Publish ``n`` messages, ``rate`` a second, and measure how each protocol delivers
    them on loopback: latency (publish to delivery) and bytes on the wire.

    One subscriber per protocol, each through its own byte-counting TCP relay
    (:func:`rtkit.chaos.proxy`), so each is counted the same way: every byte of TCP
    payload both ways, headers, framing and keep-alives included (not the TCP/IP
    headers). Every message goes to ``channel`` on the rtkit ``server`` (read by rtkit's
    WebSocket and SSE clients and by a poller of ``GET /channels/{channel}/messages
    ?after=``, every ``poll_every`` seconds) and, at the same moment, to the topic of the
    same name on the ``mqtt`` broker (read by a paho-mqtt client; QoS ``qos``). The
    publishers connect directly. First the subscribers connect (their bytes are the
    results' ``connect``), then ``idle`` seconds pass without messages (``idle``), then
    the stream (``stream``, each protocol counted until its wire is quiet after its last
    message arrived).

    Raises ``TimeoutError`` when a protocol has not received every message ``timeout``
    seconds after the last publish.
    """
    protocols = tuple(protocols)
    _check(n, rate, poll_every, idle, qos, protocols, mqtt)
    relays: dict[str, FaultProxy] = {}
    receivers: dict[str, Receiver] = {}
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(_stop, relays)
        for name in protocols:
            target: Any = server
            if name == "MQTT" and mqtt is not None:
                target = (mqtt.host, mqtt.port)
            relays[name] = relay = proxy(target)
            receivers[name] = receiver = _receiver(name, relay, server, mqtt, channel,
                                                   poll_every, qos)
            stack.push_async_callback(receiver.close)
        publish = await _publishers(stack, server, mqtt if "MQTT" in protocols else None,
                                    channel, qos)
        await asyncio.gather(*(r.open() for r in receivers.values()))
        connected = {name: _counted(relay) for name, relay in relays.items()}
        polled = {name: r.polls for name, r in receivers.items()}
        await asyncio.sleep(idle)
        rested = {name: _counted(relay) for name, relay in relays.items()}
        idle_polls = {name: r.polls - polled[name] for name, r in receivers.items()}
        polled = {name: r.polls for name, r in receivers.items()}
        run = secrets.token_hex(4)
        for receiver in receivers.values():
            receiver.tally.arm(run, n)
        ended = await _stream(publish, receivers, relays, run, n, rate, timeout)
        payload = len(json.dumps(_data(run, n - 1, time.time()), separators=(",", ":")))
        results = tuple(ProtocolResult(
            protocol=name, sent=n, latencies=tuple(receivers[name].tally.latencies),
            connect=connected[name], idle=rested[name] - connected[name], idle_seconds=idle,
            stream=ended[name][0] - rested[name], idle_polls=idle_polls[name],
            stream_polls=ended[name][1] - polled[name]) for name in protocols)
    return Comparison(results, sent=n, rate=rate, payload=payload, poll_every=poll_every)


def _receiver(name: str, relay: FaultProxy, server: Server, mqtt: MqttBroker | None,
              channel: str, poll_every: float, qos: int) -> Receiver:
    if name == "HTTP polling":
        return PollingReceiver(relay.url, server.root_key, channel, poll_every)
    if name == "MQTT":
        return MqttReceiver("127.0.0.1", relay.port, channel, qos)
    return RtkitReceiver(relay.url, server.root_key, name.lower(), channel)


def _data(run: str, i: int, sent: float) -> dict[str, Any]:
    return {"run": run, "i": i, "sent": sent}


async def _publishers(stack: contextlib.AsyncExitStack, server: Server,
                      mqtt: MqttBroker | None, channel: str, qos: int) -> Any:
    """A function that publishes one message to the rtkit channel and the MQTT topic (the
    same data, stamped with the same send time)."""
    client = Client(server.url, key=server.root_key, client_id="compare-publisher")
    await client.connect()
    stack.push_async_callback(client.close)
    rtkit_channel = client.channel(channel)
    mqtt_client: MqttClient | None = None
    if mqtt is not None:
        mqtt_client = MqttClient("compare-publisher")
        stack.push_async_callback(mqtt_client.close)
        await mqtt_client.connect(mqtt.host, mqtt.port)

    async def publish(run: str, i: int) -> None:
        sent = time.time()
        data = _data(run, i, sent)
        if mqtt_client is not None:
            mqtt_client.publish(channel, json.dumps(data, separators=(",", ":")).encode(), qos)
        await rtkit_channel.publish("tick", data)

    return publish


async def _stream(publish: Any, receivers: dict[str, Receiver], relays: dict[str, FaultProxy],
                  run: str, n: int, rate: float, timeout: float
                  ) -> dict[str, tuple[Bytes, int]]:
    """Publish ``n`` messages on a fixed schedule; each protocol's bytes (and polls) once
    its last message arrived."""
    ended: dict[str, tuple[Bytes, int]] = {}

    async def finish(name: str) -> None:
        tally = receivers[name].tally
        await tally.done.wait()
        if tally.error is not None:
            raise RuntimeError(f"{name} stopped receiving: {tally.error!r}") from tally.error
        ended[name] = (await _quiet(relays[name]), receivers[name].polls)

    waiters = [asyncio.create_task(finish(name)) for name in receivers]
    loop = asyncio.get_running_loop()
    start = loop.time()
    sends = []
    try:
        for i in range(n):
            sends.append(asyncio.create_task(publish(run, i)))
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))
        await asyncio.gather(*sends)
        await asyncio.wait(waiters, timeout=timeout)
        for task in waiters:
            if task.done():
                task.result()  # a receiver that failed says why
        missing = [f"{name}: {len(receivers[name].tally.latencies)} of {n}"
                   for name in receivers if name not in ended]
        if missing:
            raise TimeoutError("not every message arrived within "
                               f"{timeout} s: {', '.join(missing)}")
    finally:
        for task in [*sends, *waiters]:
            task.cancel()
        await asyncio.wait([*sends, *waiters])
    return ended


async def _quiet(relay: FaultProxy, pause: float = 0.03, limit: float = 1.0) -> Bytes:
    """The relay's count once nothing has crossed it for ``pause`` seconds (what answers
    the last message, an MQTT PUBACK, is still on its way when the message arrives)."""
    count = _counted(relay)
    for _ in range(int(limit / pause)):
        await asyncio.sleep(pause)
        now = _counted(relay)
        if now == count:
            break
        count = now
    return count


async def _stop(relays: dict[str, FaultProxy]) -> None:
    for relay in relays.values():
        await asyncio.to_thread(relay.stop)
