"""serve/backends/sse.py."""

from __future__ import annotations

from serve.backends.sse import SSEDecoder


def test_events_split_across_chunks() -> None:
    d = SSEDecoder()
    assert d.feed(b'data: {"a"') == []
    assert d.feed(b':1}\n') == []
    assert d.feed(b'\ndata: [DO') == [b'{"a":1}']
    assert d.feed(b"NE]\n\n") == [b"[DONE]"]
    assert not d.has_partial_event


def test_several_events_in_one_chunk_crlf_comments_and_fields() -> None:
    d = SSEDecoder()
    body = b": keep-alive\r\n\r\nevent: msg\r\nid: 7\r\ndata:x\r\n\r\ndata: line1\ndata: line2\n\n"
    assert d.feed(body) == [b"x", b"line1\nline2"]


def test_partial_event_is_reported() -> None:
    d = SSEDecoder()
    d.feed(b'data: {"cut":')
    assert d.has_partial_event
