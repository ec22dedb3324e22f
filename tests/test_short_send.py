"""The compiled ASGI short send (``_drivers/_short_send.c``) against its Python reference.

Both are driven with the same messages and a recording call and server: the same feeds,
the same awaited messages, the same server sends and return values, the same state after.
One difference is on purpose: the C one takes the short path for exact dicts only (ASGI
messages are dicts), another mapping is awaited, which delivers the same messages.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import weakref
from collections import UserDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_metrics_middleware import LLMMetricsMiddleware
from llm_metrics_middleware._drivers import asgi, short_send
from llm_metrics_middleware._drivers.short_send import CShortSend, PyShortSend
from llm_metrics_middleware.testing import InMemoryExporter

from .samples import OPENAI_STREAM

pytestmark = pytest.mark.skipif(
    CShortSend is None, reason="no compiled ShortSend to compare: _short_send.c was not built or LLM_METRICS_NO_EXTENSIONS is set"
)
ROOT = Path(__file__).resolve().parent.parent
CODE = (lambda: None).__code__
AWAITED = object()
SENT = object()


class Call:
    """Records what the relay asks of the call."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    def feed(self, chunk: bytes) -> None:
        self.log.append(("feed", chunk))

    def _awaited_send(self, message: Any) -> object:
        self.log.append(("awaited", dict(message)))
        return AWAITED


def relay(cls: type[PyShortSend]) -> tuple[PyShortSend, list[tuple[str, Any]]]:
    log: list[tuple[str, Any]] = []

    def server_send(message: Any) -> object:
        log.append(("server", dict(message)))
        return SENT

    return cls(Call(log), server_send), log


MORE = st.sampled_from([True, False, 1, 0, "", "x", None, "missing"])
MESSAGE = st.builds(
    lambda kind, more, chunk: (kind, more, chunk),
    st.sampled_from(["http.response.start", "http.response.body", "http.response.zerocopysend"]),
    MORE,
    st.one_of(st.none(), st.binary(max_size=8)),
)
STEP = st.one_of(MESSAGE, st.sampled_from(["code on", "code off", "call gone", "feed set", "feed unset"]))


def build(kind: str, more: Any, chunk: bytes | None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": kind}
    if more != "missing":
        message["more_body"] = more
    if chunk is not None:
        message["body"] = chunk
    return message


def run(cls: type[PyShortSend], steps: list[Any]) -> tuple[list[Any], Any, Any]:
    r, log = relay(cls)
    for step in steps:
        if step == "code on":
            r.code = CODE
        elif step == "code off":
            r.code = None
        elif step == "call gone":
            r.call = None
        elif step == "feed set":
            r.feed = r.call.feed if r.call is not None else None
        elif step == "feed unset":
            r.feed = None
        else:
            result = r.send(build(*step))
            log.append(("returned", "awaited" if result is AWAITED else "sent" if result is SENT else result))
    return log, r.pending, r.code


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=20))
def test_the_same_messages_give_the_same_calls_returns_and_state(steps: list[Any]) -> None:
    """Feeds, awaited messages, server sends, return values, pending chunk and code."""
    assert run(PyShortSend, steps) == run(CShortSend, steps)  # type: ignore[arg-type]


def test_the_short_path_feeds_the_previous_chunk_and_hands_the_message_on() -> None:
    """Not only alike: what the short path is (so that the comparison cannot pass on two
    relays that both await everything)."""
    for cls in (PyShortSend, CShortSend):
        r, log = relay(cls)  # type: ignore[arg-type]
        r.code = CODE
        assert r.send({"type": "http.response.body", "body": b"a", "more_body": True}) is SENT
        assert r.send({"type": "http.response.body", "body": b"b", "more_body": True}) is SENT
        assert r.send({"type": "http.response.zerocopysend", "more_body": True}) is SENT
        assert r.send({"type": "http.response.body", "body": b"", "more_body": False}) is AWAITED
        assert [e[0] for e in log] == ["server", "feed", "server", "feed", "server", "awaited"]
        assert [e[1] for e in log if e[0] == "feed"] == [b"a", b"b"] and r.pending == b"", cls


def test_a_set_feed_takes_the_pending_chunks_instead_of_the_call() -> None:
    """With ``feed`` set (the call does once its feed no longer changes), pending chunks go
    to it and not to the call's ``feed``; set back to None, to the call's again. Both
    relays, and a feed replaced while it runs is the one that was called."""
    for cls in (PyShortSend, CShortSend):
        r, log = relay(cls)  # type: ignore[arg-type]
        assert r.feed is None
        direct: list[bytes] = []
        r.code = CODE
        r.feed = direct.append
        for chunk in (b"a", b"b", b"c"):
            assert r.send({"type": "http.response.body", "body": chunk, "more_body": True}) is SENT
        assert direct == [b"a", b"b"] and [e for e in log if e[0] == "feed"] == [], cls

        def replacing(chunk: bytes) -> None:
            r.feed = None
            direct.append(b"replacing " + chunk)

        r.feed = replacing
        r.send({"type": "http.response.body", "body": b"d", "more_body": True})
        r.send({"type": "http.response.body", "body": b"e", "more_body": True})
        assert direct[-1] == b"replacing c" and [e[1] for e in log if e[0] == "feed"] == [b"d"], cls


def test_another_mapping_is_awaited_by_the_compiled_one() -> None:
    """The one difference on purpose: a mapping that is not a dict. Python takes the short
    path through its ``get``, C awaits it; the server gets the message either way (the
    awaited path sends it), and nothing is lost."""
    message = UserDict({"type": "http.response.body", "body": b"a", "more_body": True})
    py, py_log = relay(PyShortSend)
    c, c_log = relay(CShortSend)  # type: ignore[arg-type]
    py.code = c.code = CODE
    assert py.send(message) is SENT and py.pending == b"a"  # type: ignore[arg-type]
    assert c.send(message) is AWAITED and c.pending is None  # type: ignore[arg-type]
    assert py_log[0][0] == "server" and c_log[0][0] == "awaited"


class Boom(Exception):
    pass


class BadBool:
    def __bool__(self) -> bool:
        raise Boom("bool")


@pytest.mark.parametrize("fault", ["feed", "bool", "awaited"])
def test_errors_propagate_alike(fault: str) -> None:
    """A feed that raises, a ``more_body`` whose truth raises, an awaited send that raises:
    the same exception out of both, and the same state after."""
    outcomes = []
    for cls in (PyShortSend, CShortSend):
        r, log = relay(cls)  # type: ignore[arg-type]
        call: Any = r.call
        if fault == "feed":
            call.feed = lambda chunk: (_ for _ in ()).throw(Boom("feed"))
        if fault == "awaited":
            call._awaited_send = lambda message: (_ for _ in ()).throw(Boom("awaited"))
        r.code = CODE
        r.pending = b"p"
        more: Any = BadBool() if fault == "bool" else True
        message = {"type": "http.response.body" if fault != "awaited" else "http.response.start", "body": b"x", "more_body": more}
        if fault == "awaited":
            del message["more_body"]
        with pytest.raises(Boom) as caught:
            r.send(message)
        outcomes.append((str(caught.value), r.pending, [e[0] for e in log]))
    assert outcomes[0] == outcomes[1]


def test_construction_and_attributes_alike() -> None:
    """Positional or keyword arguments, the wrong count refused, and the five attributes."""
    for cls in (PyShortSend, CShortSend):
        a = cls(call="c", server_send="s")  # type: ignore[arg-type,misc]
        assert (a.call, a.server_send, a.code, a.pending, a.feed) == ("c", "s", None, None, None)
        with pytest.raises(TypeError):
            cls("c")  # type: ignore[call-arg,misc]
        with pytest.raises(TypeError):
            cls("c", "s", "extra")  # type: ignore[call-arg,misc]
        a.pending, a.code, a.call = b"x", CODE, None  # type: ignore[misc]
        assert (a.pending, a.code, a.call) == (b"x", CODE, None)


def test_a_cycle_through_the_call_is_collected_and_nothing_leaks() -> None:
    """The relay and the call point at each other while the app runs: the collector frees
    that cycle (the type supports GC); and 100k short sends leave no reference behind."""
    assert CShortSend is not None

    class Owner:
        pass

    owner = Owner()
    r = CShortSend(owner, print)
    owner.relay = r  # type: ignore[attr-defined]
    ref = weakref.ref(owner)
    del owner, r
    gc.collect()
    assert ref() is None

    r, _ = relay(CShortSend)
    r.call.log = None  # type: ignore[union-attr]
    r.call.feed = len  # type: ignore[union-attr]
    r.server_send = len
    r.code = CODE
    chunk = b"data: x\n\n"
    message = {"type": "http.response.body", "body": chunk, "more_body": True}
    before = sys.getrefcount(chunk), sys.getrefcount(message), sys.getrefcount(CODE)
    for _ in range(100_000):
        r.send(message)
    r.pending = None
    assert (sys.getrefcount(chunk), sys.getrefcount(message), sys.getrefcount(CODE)) == before


def _stream_through(relay_class: type[PyShortSend], fail_at: int | None) -> tuple[list[bytes], list[Any]]:
    """A stream through the real middleware with a server whose send is a coroutine (so
    the short path turns on), and the relay class given; what the server got and what was
    recorded."""
    events = [event + b"\n\n" for event in OPENAI_STREAM.split(b"\n\n") if event]
    chunks = events[:1] + [events[1]] * 20 + events[2:]
    memory = InMemoryExporter()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    wrapped = LLMMetricsMiddleware(app, exporters=[memory])
    got: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"model": "gpt-4o", "stream": true}', "more_body": False}

    async def send(message: Any) -> None:
        if fail_at is not None and len(got) >= fail_at:
            raise OSError("client went away")
        got.append(message.get("body", b""))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    saved = asgi.ShortSend
    asgi.ShortSend = relay_class
    try:
        try:
            asyncio.run(wrapped(scope, receive, send))
        except OSError:
            pass
    finally:
        asgi.ShortSend = saved
    records = [(c.outcome, c.usage, c.usage_source, c.dimensions, c.streamed) for c in memory.calls]
    return got, records


@pytest.mark.parametrize("fail_at", [None, 9])
def test_the_middleware_counts_the_same_with_either(fail_at: int | None) -> None:
    """End to end: the same bytes to the server, the same record, whole or cut short."""
    py = _stream_through(PyShortSend, fail_at)
    c = _stream_through(CShortSend, fail_at)  # type: ignore[arg-type]
    assert py == c
    assert py[1], "no call recorded"
    assert short_send.ShortSend is CShortSend


def test_the_pure_python_relay_passes_the_asgi_tests() -> None:
    """With ``LLM_METRICS_NO_EXTENSIONS=1`` the Python relay is the one in use, and the
    ASGI send-path and reliability tests pass on it."""
    env = {**os.environ, "LLM_METRICS_NO_EXTENSIONS": "1"}
    check = subprocess.run(
        [sys.executable, "-c", "from llm_metrics_middleware._drivers import short_send as s; "
         "assert s.ShortSend is s.PyShortSend and s.CShortSend is None"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr
    run_ = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_asgi_send_path.py", "tests/test_asgi_middleware.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert run_.returncode == 0, run_.stdout[-3000:] + run_.stderr[-2000:]
