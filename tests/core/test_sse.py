"""Server-Sent Events parser and encoder: the standard's rules, any chunking, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtkit.core import sse
from rtkit.core.sse import Comment, Event, Oversized, Retry, SSEParser


def parse(data: bytes, **limits: int) -> list[sse.Item]:
    return SSEParser(**limits).feed(data)


def events(data: bytes) -> list[Event]:
    return [i for i in parse(data) if isinstance(i, Event)]


def test_fields_and_dispatch() -> None:
    items = parse(b"event: add\nid: 7\ndata: first\ndata: second\n\n: keep-alive\nretry: 250\n"
                  b"data: next\n\n")
    assert items == [Event("first\nsecond", "add", "7"), Comment("keep-alive"), Retry(250),
                     Event("next", "message", "7")]  # the id sticks, the type does not


def test_one_space_after_the_colon_is_removed_and_only_one() -> None:
    assert events(b"data:no space\n\ndata:  two spaces\n\n") == [
        Event("no space"), Event(" two spaces")]


def test_a_field_without_colon_has_an_empty_value() -> None:
    assert events(b"data\n\n") == [Event("")]  # dispatched: the data buffer held a newline
    assert events(b"data\ndata\n\n") == [Event("\n")]


def test_no_data_no_event_but_the_id_still_moves() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 41\n\nevent: ping\n\n") == []
    assert parser.last_event_id == "41"
    assert parser.feed(b"id\n\n") == [] and parser.last_event_id == ""  # an empty id resets


def test_an_id_with_nul_is_ignored_and_retry_needs_digits() -> None:
    parser = SSEParser()
    items = parser.feed(b"id: a\x00b\nretry: 10x\nretry: -5\nretry: \xd9\xa3\ndata: x\n\n")
    assert items == [Event("x", "message", "")] and parser.retry is None


def test_unknown_fields_are_ignored_and_an_empty_event_type_means_message() -> None:
    assert events(b"foo: bar\nevent:\ndata: x\n\n") == [Event("x", "message")]


def test_every_line_ending_and_a_bom() -> None:
    expected = [Event("a\nb", "t", "1"), Event("c", "message", "1")]
    for eol in (b"\n", b"\r\n", b"\r"):
        body = eol.join([b"event: t", b"id: 1", b"data: a", b"data: b", b"", b"data: c", b"",
                         b""])
        assert events(body) == expected
        assert events(sse.BOM + body) == expected
    assert events(b"data: a\r\ndata: b\rdata: c\n\r\n") == [Event("a\nb\nc")]


def test_only_a_leading_bom_is_dropped() -> None:
    assert events(sse.BOM + sse.BOM + b"data: x\n\n") == []  # the second BOM is a field name
    assert events(b"data: " + sse.BOM + b"x\n\n") == [Event("\ufeffx")]


def test_bom_and_crlf_split_across_chunks() -> None:
    parser = SSEParser()
    out = []
    for part in (sse.BOM[:1], sse.BOM[1:2], sse.BOM[2:] + b"data: x\r", b"\n", b"\r\n"):
        out += parser.feed(part)
    assert out == [Event("x")]


def test_an_unfinished_event_is_dropped_at_the_end_of_a_stream() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 3\ndata: half") == []
    parser.reset()  # the connection ended; a new response starts
    assert parser.last_event_id == ""  # never dispatched, so never applied
    assert parser.feed(b"data: whole\n\n") == [Event("whole")]


def test_reset_keeps_the_last_event_id_and_retry() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 900\nid: 12\ndata: x\n\n")
    parser.reset()
    assert parser.last_event_id == "12" and parser.retry == 900
    assert parser.feed(sse.BOM + b"data: y\n\n") == [Event("y", "message", "12")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert events(b"data: \xff\xfe ok\n\n") == [Event("\ufffd\ufffd ok")]


def test_an_oversized_line_is_skipped_with_its_event_and_reported_once() -> None:
    parser = SSEParser(max_line=20, keep=8)
    out = parser.feed(b"data: fine\ndata: " + b"x" * 50 + b"\ndata: more\n\ndata: next\n\n")
    assert out == [Oversized("line", 56, b"data: xx"), Event("next")]


def test_an_oversized_line_split_in_chunks_is_never_buffered() -> None:
    parser = SSEParser(max_line=100, keep=4)
    out = parser.feed(b"data: ")
    for _ in range(1000):
        out += parser.feed(b"y" * 1000)
        assert len(parser._line) <= 100
    out += parser.feed(b"\n\ndata: after\n\n")
    assert out == [Oversized("line", 6 + 1_000_000, b"data"), Event("after")]


def test_an_oversized_event_is_reported_with_its_size() -> None:
    parser = SSEParser(max_event=10, keep=6)
    out = parser.feed(b"data: 12345\ndata: 67890\ndata: abc\n\ndata: ok\n\n")
    assert out == [Oversized("event", 15, b"12345\n"), Event("ok")]
    assert parse(b"data: 1234567890\n\n", max_event=10) == [Event("1234567890")]


def test_limits_must_be_sane() -> None:
    with pytest.raises(ValueError):
        SSEParser(max_line=0)


# ------------------------------------------------------------------------ encoder


def test_encoder_splits_lines_and_validates() -> None:
    assert sse.encode("a\r\nb\rc\nd", event="e", id="9", retry=100) == (
        b"retry: 100\nid: 9\nevent: e\ndata: a\ndata: b\ndata: c\ndata: d\n\n")
    assert sse.encode(id="5") == b"id: 5\n\n"
    assert sse.encode_comment("hi\nthere") == b": hi\n: there\n"
    assert sse.encode_comment() == b":\n"
    assert len(sse.padding(2048)) == 2048 and parse(sse.padding(64)) == [Comment(" " * 61)]
    for bad in ({"event": "a\nb"}, {"id": "a\rb"}, {"id": "a\x00"}, {"retry": -1},
                {"retry": True}):
        with pytest.raises(ValueError):
            sse.encode("x", **bad)  # type: ignore[arg-type]


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                min_size=1, max_size=10)
ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
              max_size=10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(texts, st.none() | names, st.none() | ids), max_size=8),
       st.sampled_from([b"\n", b"\r\n", b"\r"]), st.data())
def test_encoded_events_come_back_whatever_the_line_endings_and_chunks(
        batch: list[tuple[str, str | None, str | None]], eol: bytes, data: st.DataObject) -> None:
    stream = b"".join(sse.encode(d, event=e, id=i) + sse.encode_comment("k")
                      for d, e, i in batch)
    stream = stream.replace(b"\n", eol)
    expected, last_id = [], ""
    for d, e, i in batch:
        last_id = i if i is not None else last_id
        expected.append(Event(d.replace("\r\n", "\n").replace("\r", "\n"),
                              e or "message", last_id))
    parser = SSEParser()
    got: list[sse.Item] = []
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += parser.feed(stream[start:end])
    assert [g for g in got if isinstance(g, Event)] == expected
    assert sum(isinstance(g, Comment) for g in got) == len(batch)


tokens = st.sampled_from([b"data", b"data:", b"data: ", b"id: ", b"id:", b"event: ", b"retry: ",
                          b"12", b":", b": c", b"x", b" ", b"\n", b"\r", b"\r\n", b"\n\n",
                          sse.BOM, b"\x00", b"\xff", b"\xc3\xa9", b"yyyyyyyyyyyyyyyyy"])


@settings(max_examples=400, deadline=None)
@given(st.lists(tokens, max_size=40), st.data(), st.booleans())
def test_any_chunking_gives_the_same_items(parts: list[bytes], data: st.DataObject,
                                           small: bool) -> None:
    stream = b"".join(parts)
    limits = {"max_line": 12, "max_event": 20, "keep": 5} if small else {}
    whole = SSEParser(**limits)
    expected = whole.feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunked = SSEParser(**limits)
    got: list[sse.Item] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += chunked.feed(stream[start:end])
    assert got == expected
    assert (chunked.last_event_id, chunked.retry) == (whole.last_event_id, whole.retry)
    bytewise = SSEParser(**limits)
    assert [i for b in range(len(stream)) for i in bytewise.feed(stream[b:b + 1])] == expected
