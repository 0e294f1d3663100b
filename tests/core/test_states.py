"""The state machine: the one table, reasons on every change, no illegal moves."""

from __future__ import annotations

import pytest

from rtkit.core.states import (
    TRANSITIONS,
    ConnectionState,
    InvalidTransition,
    StateMachine,
    Trigger,
)
from rtkit.errors import InvalidCredentials

S, T = ConnectionState, Trigger


def test_values_are_lowercase_names() -> None:
    assert [s.value for s in S] == [s.name.lower() for s in S]
    assert str(S.CONNECTED) == "connected"


def test_every_state_has_a_row_and_every_target_is_a_state() -> None:
    assert set(TRANSITIONS) == set(S)
    for row in TRANSITIONS.values():
        assert all(isinstance(target, S) for target in row.values())


def test_every_state_is_reachable_from_initialized() -> None:
    seen, todo = {S.INITIALIZED}, [S.INITIALIZED]
    while todo:
        for target in TRANSITIONS[todo.pop()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(S)


def test_a_full_lifecycle_records_reasons_and_times() -> None:
    m = StateMachine(now=0.0)
    path = [
        (T.CONNECT, S.CONNECTING), (T.CONNECTED, S.CONNECTED), (T.TRANSPORT_LOST, S.DISCONNECTED),
        (T.TTL_EXPIRED, S.SUSPENDED), (T.RETRY, S.CONNECTING), (T.CONNECTED, S.CONNECTED),
        (T.CLOSE, S.CLOSING), (T.CLOSED, S.CLOSED),
    ]
    for i, (trigger, expected) in enumerate(path, start=1):
        change = m.apply(trigger, f"step {i}", now=float(i))
        assert change.current is expected
        assert change.reason == f"step {i}"
        assert change.at == float(i)
    assert m.state is S.CLOSED
    assert [c.previous for c in m.history][1:] == [c.current for c in m.history][:-1]


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("trigger", list(T))
def test_apply_follows_the_table_exactly(state: ConnectionState, trigger: Trigger) -> None:
    m = StateMachine()
    m.state = state
    target = TRANSITIONS[state].get(trigger)
    assert m.can(trigger) is (target is not None)
    if target is None:
        with pytest.raises(InvalidTransition):
            m.apply(trigger, "x", 0.0)
        assert m.state is state
    else:
        assert m.apply(trigger, "x", 0.0).current is target


def test_fatal_carries_the_error_and_history_is_bounded() -> None:
    m = StateMachine(history_limit=3)
    m.apply(T.CONNECT, "go", 0)
    err = InvalidCredentials(code=40101)
    change = m.apply(T.FATAL, "refused", 1, err)
    assert change.error is err and m.state is S.FAILED
    for i in range(5):
        m.apply(T.CONNECT, "again", i)
        m.apply(T.FATAL, "refused", i, err)
    assert len(m.history) == 3
