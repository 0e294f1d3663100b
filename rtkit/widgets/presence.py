"""PresenceList: who is on a channel, updating live."""

from __future__ import annotations

import html
import json

import ipywidgets as w

from rtkit.aio.channel import Channel
from rtkit.widgets.base import LiveWidget


class PresenceList(LiveWidget):
    """The members present on ``channel`` (client id, connection, data)."""

    def __init__(self, channel: Channel, rate: float = 10.0) -> None:
        self.channel = channel
        self.table = w.HTML()
        super().__init__([self.table], rate=rate)
        self.add_class("rtkit-presence")
        self.follow(channel.client)
        self.on_cleanup(channel.presence.on_change(lambda _: self.changed()))
        self.refresh()

    async def start(self) -> PresenceList:
        """Attach and fetch the current members (``await PresenceList(ch).start()``)."""
        await self.channel.attach()
        await self.channel.presence.get()
        self.refresh()
        return self

    def render(self) -> None:
        members = sorted(self.channel.presence.members.values(), key=lambda m: m.client_id)
        rows = "".join(
            f"<li><b>{html.escape(m.client_id)}</b> <small>({html.escape(m.connection_id)})"
            f"</small> <code>{html.escape(json.dumps(m.data))}</code></li>" for m in members)
        self.table.value = (f"<div>{len(members)} present on "
                            f"<code>{html.escape(self.channel.name)}</code></div><ul>{rows}</ul>")
