"""The compiled template test (``_template.c``) gives the answers of the Python one.

:class:`~llm_metrics_middleware._core.template.PyTemplateFront` is the reference; where
the extension was built, :data:`~llm_metrics_middleware._core.template.CTemplateFront` is
held to it here: the same chunks reach ``_read``, the same bytes are counted, the same
text reaches the meter, the same exceptions pass, and the attributes behave alike. The
pure-Python path keeps its own run of the extractor's tests (in a subprocess with
``LLM_METRICS_NO_EXTENSIONS=1``), so it stays covered when the suite runs compiled.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_metrics_middleware._core import template
from llm_metrics_middleware._core.template import CTemplateFront, PyTemplateFront

pytestmark = pytest.mark.skipif(
    CTemplateFront is None,
    reason="no compiled TemplateFront to compare: _template.c was not built or LLM_METRICS_NO_EXTENSIONS is set",
)

ROOT = Path(__file__).resolve().parent.parent


class BytesSub(bytes):
    """A bytes subclass: never skimmed (only exact bytes are)."""


class Meter:
    """A text meter that records what it is handed (type and bytes)."""

    def __init__(self) -> None:
        self.calls: list[tuple[type, bytes]] = []

    def add_json_string(self, text: bytes) -> None:
        self.calls.append((type(text), bytes(text)))


class FailingMeter:
    """A text meter whose every call raises an exception like ``error`` (a new one each time:
    raising one instance again and again chains every raise's traceback onto it, frames
    holding the meter, which the reference count test would read as a leak on 3.13)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def add_json_string(self, text: bytes) -> None:
        self.calls += 1
        raise self.error.__class__(*self.error.args)


def recorder_class(base: type[PyTemplateFront]) -> type[PyTemplateFront]:
    """A slotted subclass of ``base`` whose ``_read`` records the chunks it is given."""

    class Recorder(base):  # type: ignore[valid-type,misc]
        __slots__ = ("seen", "__weakref__")

        def _read(self, chunk: bytes) -> None:
            self.seen.append(chunk)

    Recorder.__name__ = Recorder.__qualname__ = f"Recorder[{base.__name__}]"
    return Recorder


PyRecorder = recorder_class(PyTemplateFront)
CRecorder = recorder_class(CTemplateFront) if CTemplateFront is not None else PyRecorder
RECORDERS = (PyRecorder, CRecorder)


def make(cls: type[PyTemplateFront], head: bytes | None, tail: bytes, text: Any = None) -> Any:
    """A recorder front with every attribute set, as the extractor sets them."""
    front: Any = cls()
    front.seen = []
    front._tpl_head = head
    front._tpl_tail = tail
    front._tpl_text = text
    front._tpl_bytes = 0
    return front


def template_match(chunk: object, head: bytes | None, tail: bytes) -> bytes | None:
    """The rule both fronts implement, written plainly: the text between head and tail of
    an exact-bytes chunk shaped ``head + text + tail``, with no quote in the text and no
    backslash just before the tail; else None."""
    if head is None or type(chunk) is not bytes or not head or not tail:
        return None
    if len(chunk) < len(head) + len(tail) or not chunk.startswith(head) or not chunk.endswith(tail):
        return None
    between = chunk[len(head) : len(chunk) - len(tail)]
    if b'"' in between or between.endswith(b"\\"):
        return None
    return between


@pytest.fixture(params=[True, False], ids=["identity", "lengths"])
def returns_self(request: pytest.FixtureRequest) -> Iterator[bool]:
    """The Python test as CPython runs it (identity of what removeprefix/removesuffix
    return) and as other implementations would (lengths)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(template, "_RETURNS_SELF", request.param)
        yield request.param


# The pieces chunks are made of: quotes, backslashes, escaped quotes, and bytes that make
# head and tail overlap or repeat inside the text.
PIECES = st.sampled_from([b"a", b"b", b":", b'"', b"\\", b'\\"', b"\\\\", b"\n", b"", b"\xc3\xa9"])
AFFIX = st.lists(PIECES, min_size=1, max_size=4).map(b"".join).filter(bool)
TEXT = st.lists(PIECES, max_size=6).map(b"".join)
KINDS = st.sampled_from([bytes, bytes, bytes, bytearray, memoryview, BytesSub])


@st.composite
def chunk_for(draw: st.DrawFn, head: bytes, tail: bytes) -> object:
    """One chunk, mostly near the template's shape: whole, prefix-only, suffix-only,
    shorter than head + tail, head and tail overlapping, or anything; of a bytes type or
    another."""
    text = draw(TEXT)
    whole = head + tail
    shape = draw(st.integers(0, 7))
    if shape <= 2:
        raw = head + text + tail
    elif shape == 3:
        raw = head + text
    elif shape == 4:
        raw = text + tail
    elif shape == 5:
        raw = whole[: draw(st.integers(0, len(whole) - 1))]  # shorter than head + tail
    elif shape == 6:
        cut = draw(st.integers(1, len(tail)))  # overlap: the tail's first bytes are the head's last
        raw = head + tail[cut:] if draw(st.booleans()) else head[: len(head) - min(cut, len(head))] + tail
    else:
        raw = draw(st.binary(max_size=12)) if draw(st.booleans()) else text
    return draw(KINDS)(raw)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bytes, bool, list[tuple[object, bool]]]:
    """A head, a tail, whether a meter takes the text, and chunks each with whether the
    template applies when it arrives (the extractor turns it on and off between events)."""
    head = draw(AFFIX)
    tail = draw(AFFIX)
    metered = draw(st.booleans())
    chunks = draw(st.lists(st.tuples(chunk_for(head, tail), st.booleans()), min_size=1, max_size=12))
    return head, tail, metered, chunks


@settings(
    max_examples=250,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # returns_self is the same for every example
)
@given(stream=streams())
def test_both_fronts_account_every_chunk_alike(
    stream: tuple[bytes, bytes, bool, list[tuple[object, bool]]], returns_self: bool
) -> None:
    """The same chunk sequence, fed to both (template on or off per chunk, text counted as
    bytes or metered, chunks of every bytes type): the same chunk objects reach ``_read``,
    the same ``_tpl_bytes``, the same meter calls, and all as the plain rule says."""
    head, tail, metered, chunks = stream
    fronts = [make(cls, None, tail, Meter() if metered else None) for cls in RECORDERS]
    expected_seen: list[object] = []
    expected_text: list[bytes] = []
    for chunk, on in chunks:
        between = template_match(chunk, head if on else None, tail)
        if between is None:
            expected_seen.append(chunk)
        else:
            expected_text.append(between)
        for front in fronts:
            front._tpl_head = head if on else None
            assert front.feed(chunk) is None
    py, c = fronts
    assert [id(x) for x in c.seen] == [id(x) for x in py.seen] == [id(x) for x in expected_seen]
    assert c._tpl_bytes == py._tpl_bytes
    if metered:
        assert c._tpl_text.calls == py._tpl_text.calls == [(bytes, t) for t in expected_text]
        assert c._tpl_bytes == py._tpl_bytes == 0
    else:
        assert c._tpl_bytes == py._tpl_bytes == sum(map(len, expected_text))


@pytest.mark.parametrize(
    ("chunk", "matches"),
    [
        (b'H"x"T', False),  # a quote in the text
        (b"Hx\\T", False),  # a backslash just before the tail: the tail's quote is escaped
        (b"Hx\\\\T", False),  # an escaped backslash there: refused too (the test is the last byte)
        (b"H\\nxT", True),  # a backslash elsewhere
        (b"HT", True),  # empty text
        (b"H", False),  # head only
        (b"T", False),  # tail only
        (b"", False),
        (b"HxT\n", False),
        (bytearray(b"HxT"), False),
        (memoryview(b"HxT"), False),
        (BytesSub(b"HxT"), False),
        ("HxT", False),  # not bytes at all
        (None, False),
    ],
)
def test_edge_chunks_alike(chunk: object, matches: bool, returns_self: bool) -> None:
    """Fixed edge cases of the rule: both fronts count or read each alike."""
    for metered in (False, True):
        fronts = [make(cls, b"H", b"T", Meter() if metered else None) for cls in RECORDERS]
        for front in fronts:
            front.feed(chunk)
        py, c = fronts
        assert len(py.seen) == len(c.seen) == (0 if matches else 1)
        assert all(x is chunk for x in py.seen + c.seen)
        assert py._tpl_bytes == c._tpl_bytes
        if metered:
            assert py._tpl_text.calls == c._tpl_text.calls


def test_overlapping_head_and_tail_alike(returns_self: bool) -> None:
    """Head and tail that share bytes: a chunk shorter than both is read, one just as long
    counts an empty text, on both."""
    for chunk in (b"aaa", b"aaaa", b"aaaaa", b"aba", b"abab"):
        for head, tail in ((b"aa", b"aa"), (b"ab", b"ba"), (b"a", b"aa")):
            py, c = (make(cls, head, tail) for cls in RECORDERS)
            py.feed(chunk)
            c.feed(chunk)
            assert (c.seen, c._tpl_bytes) == (py.seen, py._tpl_bytes), (chunk, head, tail)


def test_a_failing_meter_sends_the_chunk_to_read() -> None:
    """A meter that raises an Exception: neither front lets it out; both read the chunk
    instead, and count nothing."""
    for error in (ValueError("meter"), MemoryError(), RuntimeError()):
        for cls in RECORDERS:
            meter = FailingMeter(error)
            front = make(cls, b"H", b"T", meter)
            front.feed(b"HxT")
            assert meter.calls == 1
            assert front.seen == [b"HxT"] and front._tpl_bytes == 0


def test_a_meter_without_add_json_string_sends_the_chunk_to_read() -> None:
    """A ``_tpl_text`` that is no meter (AttributeError): both read the chunk."""
    for cls in RECORDERS:
        front = make(cls, b"H", b"T", object())
        front.feed(b"HxT")
        assert front.seen == [b"HxT"]


def test_a_base_exception_from_the_meter_propagates() -> None:
    """KeyboardInterrupt or SystemExit from the meter is not swallowed (the Python test
    catches Exception only): both raise it and read nothing."""
    for error in (KeyboardInterrupt(), SystemExit(3)):
        for cls in RECORDERS:
            front = make(cls, b"H", b"T", FailingMeter(error))
            with pytest.raises(type(error)):
                front.feed(b"HxT")
            assert front.seen == []


def test_a_meter_that_replaces_itself_while_it_runs() -> None:
    """The meter swaps ``_tpl_text`` (dropping the last reference to itself) during its
    call: both fronts carry on, and the next chunk goes to the new one."""
    for cls in RECORDERS:
        front = make(cls, b"H", b"T")
        after = Meter()

        class Swapping:
            def add_json_string(self, text: bytes) -> None:
                front._tpl_text = after

        front._tpl_text = Swapping()
        front.feed(b"HaT")
        front.feed(b"HbT")
        assert after.calls == [(bytes, b"b")] and front.seen == []


def test_read_raising_propagates_from_both() -> None:
    """An exception from ``_read`` reaches the caller of feed on both."""
    for base in (PyTemplateFront, CTemplateFront):

        class Raising(base):  # type: ignore[valid-type,misc]
            __slots__ = ()

            def _read(self, chunk: bytes) -> None:
                raise LookupError(chunk)

        front: Any = Raising()
        front._tpl_head, front._tpl_tail, front._tpl_text, front._tpl_bytes = b"H", b"T", None, 0
        with pytest.raises(LookupError):
            front.feed(b"nope")
        front.feed(b"HT")  # a match never calls it


def test_attributes_alike() -> None:
    """``_tpl_head``, ``_tpl_tail``, ``_tpl_text``, ``_tpl_bytes`` read back what was set,
    on both. The C front starts at None, b"", None, 0; the Python slots start unset."""
    c: Any = CRecorder()
    assert (c._tpl_head, c._tpl_tail, c._tpl_text, c._tpl_bytes) == (None, b"", None, 0)
    py: Any = PyRecorder()
    for name in ("_tpl_head", "_tpl_tail", "_tpl_text", "_tpl_bytes"):
        with pytest.raises(AttributeError):
            getattr(py, name)
    meter = Meter()
    head, tail = b"data: {", b'"}\n\n'
    for front in (py, c):
        front.seen = []
        front._tpl_head, front._tpl_tail, front._tpl_text, front._tpl_bytes = head, tail, meter, 7
    for front in (py, c):
        assert front._tpl_head is head and front._tpl_tail is tail and front._tpl_text is meter
        assert front._tpl_bytes == 7 and type(front._tpl_bytes) is int
    for front in (py, c):
        front._tpl_head, front._tpl_text, front._tpl_bytes = None, None, 2**40
        front.feed(b"data: {xy" + tail)  # no head: read
        front._tpl_head = head
        front.feed(b"data: {xy" + tail)  # counted
    assert py.seen == c.seen and py._tpl_bytes == c._tpl_bytes == 2**40 + 2
    assert py._tpl_head is c._tpl_head is head and py._tpl_text is c._tpl_text is None


def test_slotted_subclasses_have_no_dict_on_both() -> None:
    """A subclass with ``__slots__`` adds no ``__dict__`` on either base: an unknown
    attribute is refused on both."""
    for cls in RECORDERS:
        front: Any = cls()
        assert not hasattr(front, "__dict__")
        with pytest.raises(AttributeError):
            front.other = 1


def test_fronts_are_freed_and_cycles_through_the_meter_collected() -> None:
    """A front dies with its last reference, and a cycle front -> _tpl_text (a meter) ->
    front is found by gc (the C type traverses head, tail and text): both are freed."""
    for cls in RECORDERS:
        front = make(cls, b"H", b"T")
        ref = weakref.ref(front)
        del front
        assert ref() is None, cls

        class Holding(Meter):
            front: object = None

        meter = Holding()
        front = make(cls, b"H", b"T", meter)
        meter.front = front
        assert meter in gc.get_referents(front)
        front_ref, meter_ref = weakref.ref(front), weakref.ref(meter)
        del front, meter
        gc.collect()
        assert front_ref() is None and meter_ref() is None, cls


def test_c_front_leaks_no_references_or_memory() -> None:
    """100k chunks through the C front (counted, metered, read, and a failing meter): the
    reference counts of chunk, head, tail and meter end where they began, and traced
    memory does not grow."""
    assert CTemplateFront is not None
    head, tail = b"data: {" * 3, b'"}]}\n\n'
    chunk = head + b"some text" + tail
    miss = b"x" + chunk

    class Reading(CTemplateFront):  # type: ignore[valid-type,misc]
        __slots__ = ("reads",)

        def _read(self, chunk: bytes) -> None:
            self.reads += 1

    class Counting:
        def __init__(self) -> None:
            self.n = 0

        def add_json_string(self, text: bytes) -> None:
            self.n += len(text)

    counting = Counting()
    failing = FailingMeter(ValueError())
    front: Any = Reading()
    front.reads = 0
    front._tpl_head, front._tpl_tail = head, tail

    def run(n: int) -> None:
        feed = front.feed
        for meter in (None, counting, failing):
            front._tpl_text = meter
            for _ in range(n):
                feed(chunk)
                feed(miss)

    run(100)  # warm up (caches, interned names)
    watched = (chunk, miss, head, tail, counting, failing, front)
    before = [sys.getrefcount(x) for x in watched]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        run(100_000 // 3)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    after = [sys.getrefcount(x) for x in watched]
    assert after == before
    assert grown < 64 * 1024, grown
    n = 100 + 100_000 // 3
    assert front._tpl_bytes == n * len(b"some text") and counting.n == n * len(b"some text")
    assert front.reads == 4 * n and failing.calls == n


def test_feed_returns_none_whatever_read_returns() -> None:
    """feed's own answer is None on both, even when ``_read`` returns something."""
    for base in (PyTemplateFront, CTemplateFront):

        class Returning(base):  # type: ignore[valid-type,misc]
            __slots__ = ()

            def _read(self, chunk: bytes) -> str:
                return "read"

        front: Any = Returning()
        front._tpl_head, front._tpl_tail, front._tpl_text, front._tpl_bytes = b"H", b"T", None, 0
        assert front.feed(b"nope") is None, base


@pytest.mark.parametrize("kind", [bytearray, memoryview, BytesSub])
def test_head_and_tail_of_another_bytes_type(kind: type) -> None:
    """Out of the contract (the extractor learns head and tail as slices of a chunk: exact
    bytes), and the one place the two differ on purpose: given another bytes type, the
    Python test still matches, the C one sends every chunk to ``_read`` (never a wrong
    count, only the slow path; _template.c says so)."""
    for which in ("head", "tail"):
        fronts = [make(cls, b"H", b"T") for cls in RECORDERS]
        for front in fronts:
            setattr(front, f"_tpl_{which}", kind(getattr(front, f"_tpl_{which}")))
            front.feed(b"HxT")
        py, c = fronts
        assert (py.seen, py._tpl_bytes) == ([], 1), which
        assert (c.seen, c._tpl_bytes) == ([b"HxT"], 0), which


def test_the_pure_python_path_passes_the_extractor_tests() -> None:
    """With ``LLM_METRICS_NO_EXTENSIONS=1`` the Python front is the one in use, and the
    template, core and extractor tests pass on it (they run compiled in this process)."""
    env = {**os.environ, template.NO_EXTENSIONS_VARIABLE: "1"}
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llm_metrics_middleware._core import template as t; "
            "assert t.TemplateFront is t.PyTemplateFront and t.CTemplateFront is None, t.TemplateFront",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    tests = ["tests/test_sse_template.py", "tests/test_core_once.py", "tests/test_extractor.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
