"""docs/protocol.md must describe the code: every action, every field, every error code."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from rtkit.core import frames as fr
from rtkit.errors import CODES, class_for_code, describe, error

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def _rows(section: str) -> dict[str, str]:
    """Table rows of a section, keyed by the first cell's backticked name."""
    body = DOC.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        m = re.match(r"\|\s*`([a-z_]+)`\s*\|(.*)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


@pytest.mark.parametrize(("section", "table"), [("Frames sent by the client", fr.CLIENT_FRAMES),
                                                ("Frames sent by the broker", fr.SERVER_FRAMES)])
def test_every_action_and_field_is_documented(section: str, table: dict) -> None:
    rows = _rows(section)
    assert set(rows) == set(table)
    for action, cls in table.items():
        for f in dataclasses.fields(cls):
            field_name = "events" if (cls, f.name) == (fr.PresenceEvent, "changes") else f.name
            assert f"`{field_name}`" in rows[action], f"{action}.{field_name} is not documented"


def test_error_table_matches_the_code() -> None:
    documented = {int(code): text.strip() for code, text in
                  re.findall(r"^\| (\d{5}) \| (.+?) \|$", DOC, re.M)}
    assert documented == CODES


def test_codes_map_to_their_classes() -> None:
    for code in CODES:
        err = error(code)
        assert isinstance(err, class_for_code(code))
        assert err.code == code and err.message == describe(code)
    assert type(error(40140)).__name__ == "TokenExpired"
    assert type(error(40103)).__name__ == "InvalidCredentials"
    assert type(error(42900)).__name__ == "LimitExceeded"
    assert issubclass(type(error(40800)), TimeoutError)


def test_message_object_fields_are_documented() -> None:
    rows = _rows("Channels and messages")
    assert set(rows) == {f.name for f in dataclasses.fields(fr.Message)} - {"channel"}


def test_announced_limits_and_the_nesting_depth_are_documented() -> None:
    from rtkit.core.config import BrokerConfig

    body = DOC.split("## Frames sent by the broker", 1)[1].split("\n## ", 1)[0]
    for key in BrokerConfig().limits():
        assert f"`{key}`" in body, f"limits.{key} is not documented"
    assert f"at most **{fr.MAX_DEPTH}** levels" in DOC
    example = re.search(r'"limits":(\{[^}]*\})', DOC)
    assert example is not None
    assert set(json.loads(example.group(1))) == set(BrokerConfig().limits())
