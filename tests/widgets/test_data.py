"""Messages and state history as DataFrames with proper dtypes, bounded in memory."""

from __future__ import annotations

import pandas as pd

import rtkit
from rtkit.data import MessageRecorder, record, states_frame
from tests.conftest import eventually, within


async def test_recorded_messages_frame_has_dtypes_and_a_window() -> None:
    with rtkit.serve() as srv:
        async with rtkit.Client(srv.url, key=srv.root_key, client_id="me") as c:
            rec = await record(c.channel("feed"), window=5)
            for i in range(8):
                await c.channel("feed").publish("reading", {"temp": 20 + i, "unit": "C"})
            await eventually(lambda: rec.count == 8)
            frame = rec.dataframe()
            assert len(frame) == 5 and list(frame["serial"]) == [4, 5, 6, 7, 8]
            assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
            assert str(frame["received"].dtype) == "datetime64[ns, UTC]"
            assert frame["serial"].dtype == "int64" and frame["latency_ms"].dtype == "float64"
            assert (frame["latency_ms"] >= 0).all() and (frame["latency_ms"] < 1000).all()
            flat = rec.dataframe(flatten=True)
            assert list(flat["data.temp"]) == [23, 24, 25, 26, 27]
            await rec.stop()
            states = states_frame(c)
            assert list(states["state"]) == ["connecting", "connected"]
            assert str(states["at"].dtype) == "datetime64[ns, UTC]"
            assert states["previous_lasted_s"].iloc[1] >= 0
            assert str(states["error_code"].dtype) == "Int64"
            assert list(states["transport"]) == ["websocket", "websocket"]


def test_empty_frames_keep_their_columns_and_dtypes() -> None:
    frame = MessageRecorder(window=3).dataframe()
    assert frame.empty and frame["serial"].dtype == "int64"
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)


async def test_rerunning_a_widget_cell_stops_the_old_widget(monkeypatch: object) -> None:
    import sys
    import types

    from rtkit import _rerun
    from rtkit.widgets import ConnectionPanel

    shell = types.SimpleNamespace(execution_count=1)
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    sys.modules["IPython"] = module
    _rerun._registry.clear()
    try:
        with rtkit.serve() as srv:
            c = rtkit.Client(srv.url, key=srv.root_key)

            def cell() -> ConnectionPanel:
                return ConnectionPanel(c)

            first = cell()
            shell.execution_count = 2
            second = cell()
            assert first.closed and not first.running
            assert second.running
            second.close()
            await within(c.close())
    finally:
        del sys.modules["IPython"]
        _rerun._registry.clear()
