"""The state history a user sees is on the wall clock (ConnectionPanel, states_frame)."""

from __future__ import annotations

import time

import rtkit
from rtkit.data import states_frame
from tests.conftest import scaled, within


async def test_state_changes_carry_wall_clock_times() -> None:
    seen: list[rtkit.StateChange] = []
    with rtkit.serve() as srv:
        before = time.time()
        client = rtkit.Client(srv.url, key=srv.root_key)
        client.on_state_change(seen.append)
        await within(client.connect())
        after = time.time()
        history = client.state_history
        assert history and seen
        for change in (*history, *seen):
            assert before - scaled(1) <= change.at <= after + scaled(1), change
        assert [c.at for c in history] == sorted(c.at for c in history)
        frame = states_frame(client)
        assert frame["at"].iloc[-1].year == time.gmtime().tm_year
        await client.close()
