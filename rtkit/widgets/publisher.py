"""Publisher: publish from a form; bad JSON or a refused publish is shown inline."""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as w

from rtkit.aio.client import Client
from rtkit.aio.subscription import PublishResult
from rtkit.errors import ProtocolError
from rtkit.widgets.base import LiveWidget, error_html, ok_html


class Publisher(LiveWidget):
    """A channel, an event name and JSON data, and a Publish button. The outcome (the ack's
    serial, or the error code and message) appears under the button, never as a traceback."""

    def __init__(self, client: Client, channel: str = "demo", name: str = "message",
                 data: str = '{"text": "hello"}') -> None:
        self.client = client
        self.channel = w.Text(value=channel, description="channel")
        self.name = w.Text(value=name, description="event")
        self.data = w.Textarea(value=data, description="data (JSON)")
        self.button = w.Button(description="Publish", button_style="primary", icon="send")
        self.status = w.HTML()
        self.button.on_click(lambda _: self.publish())
        self.last_result: PublishResult | None = None
        self.last_error: BaseException | None = None
        super().__init__([self.channel, self.name, self.data, self.button, self.status])
        self.add_class("rtkit-publisher")

    def publish(self) -> Any:
        """What the button does: validate, publish, report. Returns the task (or None)."""
        try:
            data = json.loads(self.data.value) if self.data.value.strip() else None
        except json.JSONDecodeError as exc:
            self._failed(ProtocolError(f"invalid JSON: {exc.msg} at line {exc.lineno} "
                                       f"column {exc.colno}", code=40001))
            return None
        try:
            channel = self.client.channel(self.channel.value.strip())
        except ProtocolError as exc:
            self._failed(exc)
            return None
        self.status.value = "publishing..."
        return self.run(channel.publish(self.name.value, data), done=self._done,
                        failed=self._failed)

    def _done(self, result: PublishResult) -> None:
        self.last_result, self.last_error = result, None
        dup = " (duplicate)" if result.duplicate else ""
        self.status.value = ok_html(f"acked: serial {result.serial}, id {result.id}{dup}")

    def _failed(self, exc: BaseException) -> None:
        self.last_error = exc
        self.status.value = error_html(exc)

    def render(self) -> None:
        """Nothing streams into this widget."""
