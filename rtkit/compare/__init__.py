"""Protocols compared by measurement: HTTP polling, SSE, WebSocket and MQTT on one stream.

    mqtt = rtkit.compare.mqtt_broker()                 # a real MQTT broker, own thread
    result = await rtkit.compare.measure(server, mqtt, n=60, rate=20, poll_every=0.1)
    result.frame()                                     # p50/p99 latency, bytes per message

Every subscriber reaches its broker through its own byte-counting relay
(:func:`rtkit.chaos.proxy`), so every protocol's bytes are counted the same way. The MQTT
broker (rumqttd, from the ``iotcore`` package) and client (``paho-mqtt``) are development
dependencies, imported only when used.
"""

from rtkit.compare.mqtt import MqttBroker, mqtt_broker
from rtkit.compare.run import PROTOCOLS, measure
from rtkit.compare.stats import Bytes, Comparison, ProtocolResult, percentile

__all__ = ["PROTOCOLS", "Bytes", "Comparison", "MqttBroker", "ProtocolResult", "measure",
           "mqtt_broker", "percentile"]
