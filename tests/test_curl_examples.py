"""The curl examples of docs/protocol.md run against a live broker, in the document's order,
and print what the document says they print (up to timestamps, epochs and generated ids).

``make test`` installs curl when it is missing and it can (``scripts/ensure-curl.sh``);
otherwise this test is skipped with the reason, except with ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import rtkit
from tests.conftest import scaled

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
TOKEN_CAPABILITIES = {"chat:*": ["subscribe", "history", "presence"]}
#: Values that differ from run to run: replaced by a placeholder on both sides.
VOLATILE = [
    (re.compile(r"\b1\d{12}\b"), "<ms>"),  # times in ms since the epoch
    (re.compile(r'"epoch":"[0-9a-f]{12}"'), '"epoch":"<epoch>"'),
    (re.compile(r"\bid: [0-9a-f]{12}:"), "id: <epoch>:"),
    (re.compile(r"\br\d+-[0-9a-f]{6}:\d+\b"), "<message id>"),
    (re.compile(r'"connection_key":"[^"]*"'), '"connection_key":"<key>"'),
    (re.compile(r"\bc\d+-[0-9a-f]{6}\b"), "<connection id>"),
    (re.compile(r'"stream":"[^"]*"'), '"stream":"<stream key>"'),
    (re.compile(r'"(connections|channels)":\d+'), r'"\1":<n>'),
]


def examples() -> list[tuple[str, str, str]]:
    """(script, kind of output, documented output) for every ``sh`` block with ``curl``."""
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", DOC, re.S | re.M)
    out = []
    for (kind, body), (next_kind, next_body) in zip(blocks, [*blocks[1:], ("", "")],
                                                      strict=True):
        if kind == "sh" and "curl " in body:
            assert next_kind in ("json", "http", "text"), f"no output shown after:\n{body}"
            out.append((body, next_kind, next_body))
    return out


def normalize(text: str) -> str:
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return text


def same_json(documented: str, actual: str) -> None:
    doc = normalize(json.dumps(json.loads(documented), separators=(",", ":")))
    got = normalize(json.dumps(json.loads(actual), separators=(",", ":")))
    assert got == doc


def compare(kind: str, documented: str, actual: str) -> None:
    if kind == "json":
        same_json(documented, actual)
    elif kind == "http":
        doc_head, _, doc_body = documented.replace("\r\n", "\n").partition("\n\n")
        head, _, body = actual.replace("\r\n", "\n").partition("\n\n")
        doc_lines, lines = doc_head.splitlines(), head.splitlines()
        assert lines[0] == doc_lines[0]  # the status line
        for header in doc_lines[1:]:
            assert header in lines, f"{header!r} not in {lines}"
        same_json(doc_body, body)
    else:
        def events(text: str) -> list[str]:
            return [normalize(line) for line in text.splitlines() if line.strip()]
        assert events(actual) == events(documented)


def test_the_documented_examples_are_found() -> None:
    found = examples()
    assert len(found) >= 10
    assert any("/v1/connect" in script for script, _, _ in found)
    assert any("/events" in script for script, _, _ in found)


def test_curl_examples_run_against_a_live_broker(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        reason = "curl is not installed (make test installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: the examples must run)")
        pytest.skip(reason)
    with rtkit.serve() as srv:
        env = {**os.environ, "RTKIT": srv.url.replace("ws://", "http://"),
               "KEY": srv.root_key,
               "TOKEN": srv.issue_token("ana", TOKEN_CAPABILITIES)}
        for script, kind, documented in examples():
            result = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=scaled(30))
            where = f"example:\n{script}\nprinted:\n{result.stdout}{result.stderr}"
            assert result.returncode == 0, where
            try:
                compare(kind, documented, result.stdout)
            except (AssertionError, ValueError) as exc:
                raise AssertionError(f"{where}\ndocumented:\n{documented}\n{exc}") from None
