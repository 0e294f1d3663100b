"""The REST interface's HTTP side, sans I/O: routes, credentials, query parameters, and
replies (rtkit errors mapped to HTTP statuses with a JSON body).

Used by :class:`~rtkit.core.rest.RestApi` and its driver (``rtkit.aio.httpapi``); every
name here is importable from ``rtkit.core.rest`` too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from rtkit.errors import InvalidCredentials, ProtocolError, RtkitError, error, error_from_wire

__all__ = [
    "JSON", "Later", "MethodNotAllowed", "Reply", "Route", "credentials", "error_reply",
    "http_status", "int_param", "json_reply", "parse_last_event_id", "publish_reply", "route",
    "split_target",
]

JSON = "application/json"
#: Sends a reply that could not be given at once (on a node of a cluster, what the request
#: needs comes from the backplane).
Later = Callable[["Reply"], None]


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole HTTP response: status, body (JSON unless ``content_type`` says otherwise)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = JSON


@dataclass(frozen=True, slots=True)
class Route:
    """What a request asks for: ``kind`` is ``publish``, ``history``, ``presence``,
    ``events`` (a channel's SSE stream), ``health``, ``connect`` (the SSE transport's
    stream) or ``send`` (the SSE transport's frames)."""

    kind: str
    channel: str | None = None


# ------------------------------------------------------------------------ HTTP mapping


def http_status(code: int) -> int:
    """The HTTP status for an rtkit error code (see docs/protocol.md, REST interface)."""
    if code in (42901, 42902):
        return 413
    if code in (40300, 40301):
        return 403
    if code in (50000, 50001):  # (50000: a node of a cluster without its backplane)
        return 503
    group = code // 100
    return {400: 400, 401: 401, 403: 403, 404: 404, 408: 408, 429: 429}.get(group, 500)


def error_reply(err: RtkitError, status: int | None = None) -> Reply:
    """``{"error": {"code", "message"}}`` with the fitting status (and, for 401, how to
    authenticate)."""
    status = status or http_status(err.code)
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("WWW-Authenticate", 'Bearer realm="rtkit", Basic realm="rtkit"'),)
    body = json.dumps({"error": err.to_wire()}, separators=(",", ":")).encode() + b"\n"
    return Reply(status, body, headers)


def publish_reply(answer: dict[str, Any]) -> Reply:
    """The reply to a publish from the broker's ``ack`` or ``nack`` of it."""
    if answer.get("action") == "ack":
        result = {k: answer[k] for k in ("channel", "id", "serial", "timestamp")}
        if answer.get("duplicate"):
            result["duplicate"] = True
        return json_reply(result, 200 if answer.get("duplicate") else 201)
    return error_reply(error_from_wire(answer.get("error")))


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def split_target(target: str) -> tuple[list[str], dict[str, str]]:
    """The path's segments (percent-decoded one by one, so a channel name may hold an
    encoded ``/``) and the query's parameters (the last of a repeated name wins)."""
    path, _, query = target.partition("?")
    segments = [unquote(part) for part in path.split("/")[1:]]
    params: dict[str, str] = {}
    for pair in query.split("&") if query else ():
        name, _, value = pair.partition("=")
        params[unquote(name.replace("+", " "))] = unquote(value.replace("+", " "))
    return segments, params


def route(method: str, segments: list[str]) -> Route:
    """The route of a request; raises 40400 (unknown path) or ``ProtocolError`` with a
    ``405`` hint for a known path and the wrong method."""
    def only(*methods: str) -> None:
        if method not in methods:
            raise MethodNotAllowed(methods)

    if segments == ["health"]:
        only("GET", "HEAD")
        return Route("health")
    if segments == ["v1", "connect"]:
        only("GET")
        return Route("connect")
    if segments == ["v1", "send"]:
        only("POST")
        return Route("send")
    if len(segments) == 3 and segments[0] == "channels" and segments[1]:
        channel, what = segments[1], segments[2]
        if what == "messages":
            only("GET", "POST")
            return Route("publish" if method == "POST" else "history", channel)
        if what == "presence":
            only("GET")
            return Route("presence", channel)
        if what == "events":
            only("GET")
            return Route("events", channel)
    raise error(40400, "no such resource: see docs/protocol.md, REST interface")


class MethodNotAllowed(ProtocolError):
    """A known path asked with a method it does not answer (HTTP 405)."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(f"allowed methods: {', '.join(allowed)}", code=40000)
        self.allowed = allowed


def credentials(headers: dict[str, str]) -> tuple[str, str]:
    """``("token", jwt)`` or ``("key", "<key_id>:<secret>")`` from the Authorization header;
    raises 40106 when there is none and 40101 when it cannot be read."""
    value = headers.get("authorization", "").strip()
    if not value:
        raise error(40106, "no credentials given: send 'Authorization: Bearer <token>' or "
                           "HTTP Basic with an API key")
    scheme, _, rest = value.partition(" ")
    scheme, rest = scheme.lower(), rest.strip()
    if scheme == "bearer" and rest:
        return "token", rest
    if scheme == "basic" and rest:
        try:
            user, sep, secret = base64.b64decode(rest, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidCredentials("malformed Basic credentials", code=40101) from None
        if sep and user and secret:
            return "key", f"{user}:{secret}"
        raise InvalidCredentials("Basic credentials must be <key_id>:<secret>", code=40101)
    raise InvalidCredentials("the Authorization header must be 'Bearer <token>' or Basic",
                             code=40101)


def parse_last_event_id(value: str | None) -> tuple[str | None, int] | None:
    """A channel stream's ``Last-Event-ID``: ``<epoch>:<serial>`` (what the stream sends) or
    a bare ``<serial>`` (in the channel's current epoch). None when absent."""
    if value is None or not value.strip():
        return None
    epoch, sep, serial = value.strip().rpartition(":")
    if not serial.isdigit() or len(serial) > 18 or (sep and not epoch):
        raise ProtocolError("Last-Event-ID must be <epoch>:<serial> or a serial", code=40003)
    return (epoch if sep else None), int(serial)


def int_param(params: dict[str, str], name: str, minimum: int) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18 or int(value) < minimum:
        raise ProtocolError(f"'{name}' must be an integer >= {minimum}", code=40003)
    return int(value)
