"""What the readers of one response body found: usage, model, provider, text, error.

Every reader (:mod:`.readers`) hands the JSON objects it finds to one :class:`Findings`,
whatever the body format; the extractor turns it into an :class:`~.extractor.Extraction`
when the body ends.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from typing import Any

from .estimate import TokenCounter
from .jsonscan import JSONObject, JSONScanner, Path
from .providers.facts import STREAM_TEXT, TEXT_FIELD_NAMES, USAGE_MARKERS, StreamText
from .providers.objects import OBJECT_PATHS, counts_from_object, model_from_object
from .providers.pointers import UsagePointers
from .textfields import TextFieldCounter
from .usage import Invalid, UsageAccumulator

#: Bytes of SSE events whose text measure a body may put off (see Findings.pending).
PENDING_TEXT = 8 * 1024


class TextMeter:
    """Counts generated text without keeping it: bytes/4, or a tokenizer on small batches."""

    __slots__ = ("_counter", "_decoder", "_pending", "_measured", "bytes", "tokens", "counts_bytes")

    BATCH = 4096

    def __init__(self, counter: TokenCounter | None) -> None:
        self._counter = counter
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if counter else None
        # The text a tokenizer has yet to see; no list without one (none would ever be
        # kept: bytes are summed), an object fewer per response.
        self._pending: list[str] | None = [] if counter is not None else None
        # Bytes measured without the text at hand (a whole JSON body's answer): with a
        # tokenizer they are estimated at the default rate, not lost.
        self._measured = 0
        self.bytes = 0
        self.tokens = 0
        #: Text is counted in bytes (no tokenizer): the order it is measured in does not
        #: matter. (A field, not a property: read once per response, by Findings.)
        self.counts_bytes = counter is None

    def add_json_string(self, raw: bytes) -> None:
        """``raw`` is a JSON string's body, escapes included."""
        if self._counter is None:
            self.bytes += len(raw)
            return
        try:
            text = json.loads(b'"' + raw + b'"')
        except ValueError:
            text = raw.decode("utf-8", "replace")
        self._add_text(text)

    def add_bytes(self, n: int) -> None:
        self._measured += n

    def _add_text(self, text: str) -> None:
        pending = self._pending
        if pending is None:  # no tokenizer: add_json_string sums bytes and never comes here
            self.bytes += len(text)
            return
        pending.append(text)
        self.bytes += len(text)
        if self.bytes >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        if pending and self._counter is not None:
            try:
                self.tokens += max(0, int(self._counter("".join(pending))))
            except Exception:
                self.tokens += -(-self.bytes // 4)
        pending.clear()
        self.bytes = 0

    def result(self) -> int:
        if self._counter is None:
            return -(-(self.bytes + self._measured) // 4)
        self._flush()
        return self.tokens + -(-self._measured // 4)


class Findings(UsageAccumulator):
    """The state every reader of one body reports to.

    It is the accumulator of the body's usage itself (:meth:`update`, :meth:`result`,
    :attr:`seen`), not the owner of one: an object and a call fewer for every response.
    ``text`` is None unless the generated text is counted (for an estimate); ``triggers``
    are the bytes an event must contain to be worth parsing for the custom format.
    """

    __slots__ = (
        "model", "provider", "error", "text", "custom", "triggers", "markers", "text_roots", "text_spans",
        "stream_text", "pending", "pending_room",
    )

    def __init__(
        self,
        custom: UsagePointers | None,
        text: TextMeter | None,
        text_roots: Sequence[str],
        stream_text: StreamText = STREAM_TEXT,
    ) -> None:
        # Built for every response: kept to plain assignments (the scanner's paths are
        # only worked out when a scanner is needed).
        # UsageAccumulator.__init__'s two fields, set here (a call fewer).
        self.counts = None
        self.seen = False
        self.model: str | None = None
        #: The provider the first usage shape seen names (``custom`` for custom pointers).
        self.provider: str | None = None
        #: Why counting failed, or None. The first cause is kept, except where noted.
        self.error: str | None = None
        self.text = text
        self.custom = custom
        if custom is None:
            self.triggers: tuple[bytes, ...] = ()
            #: Bytes whose presence means an event may hold usage besides a usage object.
            self.markers = USAGE_MARKERS
        else:
            self.triggers = custom.triggers
            self.markers = USAGE_MARKERS + custom.triggers
        #: Top-level fields under which a JSON body's text fields are measured.
        self.text_roots = text_roots if text is not None else ()
        #: Where the text strings of SSE event data are, for this operation's chunks.
        self.text_spans = stream_text.spans
        self.stream_text = stream_text
        #: SSE events (or chunks of them) whose text is measured only when asked
        #: (:meth:`measure_pending`): the few events of a stream that are not skimmed by
        #: its template (its first, its last ones, the one with the usage) each cost a
        #: text regex scan, and a caller that wants the text only for an estimate never
        #: asks for it when the body reported usage. Only text counted in bytes (order
        #: does not matter to a sum; a tokenizer's batches are kept in order), and only
        #: :attr:`pending_room` bytes of it: memory stays bounded, the rest is measured
        #: as it comes.
        self.pending: list[bytes] = []
        self.pending_room = PENDING_TEXT if text is not None and text.counts_bytes else 0

    def measure_pending(self) -> None:
        """Measure the text of the :attr:`pending` events, as it would have been measured
        when they came (the same search on the same bytes)."""
        text = self.text
        if text is None:
            return
        spans = self.text_spans
        for data in self.pending:
            if data.__class__ is not bytes:
                data = bytes(data)
            for start, end in spans(data):
                text.add_json_string(data[start:end])
        self.pending.clear()

    @property
    def paths(self) -> Sequence[Path]:
        custom = self.custom
        return OBJECT_PATHS if custom is None else [*OBJECT_PATHS, *custom.scan_paths()]

    def fail(self, kind: str) -> None:
        if self.error is None:
            self.error = kind

    def ended(self, *, failed: bool, idle: bool, dropped: bool) -> None:
        """What a body's decoder said when the body ended: broken (``malformed``), cut in
        the middle of a value (``truncated``) or holding a value too large to keep
        (``too_large``); the last two only when no usage was found anyway."""
        if failed:
            self.fail("malformed")
        elif not idle and not self.seen:
            self.fail("truncated")
        if dropped and not self.seen:
            self.fail("too_large")

    def scanner(self, *, text: bool = True) -> JSONScanner:
        """An incremental scanner that sends the objects it finds here (and, with ``text``,
        the answer's text to :attr:`text_counter`)."""
        if not text or not self.text_roots:
            return JSONScanner(self.paths, self.on_object)
        return JSONScanner(self.paths, self.on_object, text_roots=self.text_roots, text_counter=self.text_counter())

    @staticmethod
    def text_counter() -> TextFieldCounter:
        """A counter of a whole JSON response's text (every provider's text fields)."""
        return TextFieldCounter(TEXT_FIELD_NAMES)

    def event_counter(self) -> TextFieldCounter:
        """A counter of an SSE event's text, for one too large to keep and match whole."""
        return TextFieldCounter(self.stream_text.names)

    def on_object(self, obj: JSONObject | dict[str, Any], hinted: bool = False) -> None:
        """``hinted``: its bytes hold a usage key with an object (see counts_from_object)."""
        try:
            custom = self.custom
            if custom is not None:
                counts = custom.counts(obj)
                if counts is not None:
                    self.update(counts)
                    self.provider = "custom"
                if self.model is None:
                    self.model = custom.model_of(obj)
            found = counts_from_object(obj, not hinted)
            if found is not None:
                counts, provider = found
                self.update(counts)
                if self.provider is None:
                    self.provider = provider
            if self.model is None:
                self.model = model_from_object(obj)
        except Invalid:
            self.error = "invalid_usage"  # wins over an earlier cause: the body lied
