"""Per-call state: :class:`MeteredCall`, what the drivers feed one LLM call's request and
response to, and what turns them into a :class:`~.call.CallRecord`.

Kept apart from :mod:`.metering` (:class:`~.metering.Metering`: one middleware's options,
sinks and delivery, built once) because this is the per-request side: one instance per
call, on the request path, built by a driver as ``MeteredCall(metering, view)``. It stands
above :mod:`.metering`: it reads its Metering, which never reads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .._core import readers
from .._core.decoders import decompressor_for, is_identity
from .._core.estimate import TokenCounter, tokens_from_bytes
from .._core.extractor import JSON, NONE, BodyFormat, Extraction, UsageExtractor
from .._core.peek import BodyPeek
from .._core.providers import Route
from .._core.providers.facts import (
    STREAMING_OPERATIONS,
    UNBILLED_OPERATIONS,
    counts_from_headers,
)
from .._core.usage import MAX_TOKENS, Counts, make_usage, with_hidden_output
from .._core.whole import extract_whole_json
from .call import (
    COMPLETED,
    ESTIMATED,
    NO_USAGE,
    REPORTED,
    CallRecord,
    Origin,
    Outcome,
    UsageSource,
)
from .dimensions import CallContext, safe_text
from .reading import FORMATS, STREAM_FORMATS, body_error, format_of, provider_by_headers, with_header_counts
from .request import RequestView
from .trace import TraceIds, current_trace

if TYPE_CHECKING:
    from .metering import Metering

logger = logging.getLogger("llm_metrics_middleware")
_new = object.__new__


def _ignore(chunk: bytes) -> None:
    """The body of a response that is not read."""


class MeteredCall(CallContext):
    """Per-request state. Every method is safe to call: none raises.

    Its :class:`CallContext` fields (provider, operation, model) are set when it finishes,
    for the dimension sources, and read by nothing before.
    """

    __slots__ = (
        "metering",
        "view",
        "route",
        "peek",
        "started",
        "status",
        "extractor",
        "first_chunk",
        "want_text",
        "finished",
        "fmt",
        "call_view",
        "origin",
        "incoming",
        "metered",
        "counted_elsewhere",
        "overrides",
        "header_counts",
        "feed",
        "deferred",
        "whole",
        "token_counter",
        "trace",
    )

    def __init__(
        self,
        metering: Metering,
        view: RequestView,
        *,
        call_view: RequestView | None = None,
        origin: Origin = "incoming",
        incoming: MeteredCall | None = None,
    ) -> None:
        self.metering = metering
        #: What the dimensions are evaluated on: the incoming request.
        self.view = view
        #: The LLM request itself (route, body fields, prompt size): the incoming request
        #: for a proxied call, the outgoing one for a call the app makes.
        self.call_view = call_view = view if call_view is None else call_view
        self.origin: Origin = origin
        #: The incoming request an outgoing call was made in (None: outside any request).
        self.incoming = incoming
        #: Set when an outgoing LLM call of this request was metered: this response only
        #: relays (or summarises) it and is not counted again.
        self.counted_elsewhere = False
        #: Dimension values set by ``metering_context()`` for this call, by name or label.
        self.overrides: dict[str, str] | None = None
        self.started = time.perf_counter()
        # What the call's route says (the route, whether it is metered, whether its text
        # is counted), worked out once per path and middleware: see Metering.route_entry.
        entry = metering.routes.get(call_view.path)
        if entry is None:
            entry = metering.route_entry(call_view)
        self.route: Route
        #: Known LLM path, or one ``include_paths=`` allows; and not excluded.
        self.metered: bool
        self.route, self.metered, self.want_text = entry
        # Peeked on every path: the dimensions of outgoing calls made while serving a
        # non-LLM path read the incoming body too (its "user").
        self.peek: BodyPeek | None = call_view.start_peek()
        self.status = 0
        self.extractor: UsageExtractor | None = None
        self.first_chunk: float | None = None
        self.finished = False
        self.fmt: BodyFormat = NONE
        self.header_counts: Counts | None = None
        #: A JSON body read when it ends (see response_start), its one chunk so far, and
        #: the token counter for its estimate.
        self.deferred = False
        self.whole: bytes | None = None
        self.token_counter: TokenCounter | None = None
        #: What the drivers call with every response body chunk: a no-op until
        #: response_start decides to read the body, then the method that notes the time of
        #: the first chunk, then the extractor's own ``feed``, so a streamed chunk costs one
        #: Python call here, not two.
        self.feed: Callable[[bytes], None] = _ignore
        #: The OpenTelemetry span current when the call started (see :mod:`.trace`); for
        #: an outgoing call made when no span is current (a WSGI body, iterated after the
        #: tracing middleware detached its span), the span of the request it belongs to.
        trace = current_trace()
        if trace is None and incoming is not None:
            trace = incoming.trace
        self.trace: TraceIds | None = trace

    def request_body(self, chunk: bytes) -> None:
        peek = self.peek
        if peek is not None and not peek.done:
            try:
                peek.feed(chunk)
            except Exception:
                self.peek = None

    def response_start(
        self,
        status: int,
        content_type: str | bytes | None,
        content_encoding: str | None,
        usage_headers: Mapping[str, str] | None = None,
    ) -> None:
        """``usage_headers``: the response headers named in ``facts.USAGE_HEADER_NAMES``
        (lower-case names), which some providers report usage in (Bedrock).
        ``content_type`` as the driver has it: a str, or the raw bytes of an ASGI header
        (looked up as they are, decoded only the first time a value is met)."""
        try:
            self.status = status
            if self.trace is None:  # a span the app started itself is current now
                self.trace = current_trace()
            if self.route.operation in UNBILLED_OPERATIONS:
                return  # token counting, moderation: a call, but no tokens
            if usage_headers:
                self.header_counts = counts_from_headers(usage_headers)
            if status >= 400 or status < 200 or not self.metered or self.counted_elsewhere:
                return
            decompressor = None
            if content_encoding and not is_identity(content_encoding):
                decompressor = decompressor_for(content_encoding)
                if decompressor is None:
                    return  # an encoding we cannot read: pass it on unread
            fmt = FORMATS.get(content_type)
            if fmt is None:
                fmt = format_of(content_type)
            if fmt == NONE:
                return
            metering = self.metering
            body = self.call_view.body
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            self.fmt = fmt
            token_counter = None if include_usage else metering.token_counter
            if fmt == JSON and decompressor is None and metering.custom is None:
                # Read when it ends: most such bodies come whole, in one message or block,
                # and extract_whole_json reads them with one parse; a body that comes in
                # more pieces gets its extractor at the second (see _json_body).
                self.deferred = True
                self.token_counter = token_counter
                self.feed = self._json_body
                return
            self.extractor = UsageExtractor(
                fmt,
                custom=metering.custom,
                # Set from the route (Metering.route_entry): only when usage may be missing
                # (estimates on, a provider whose streams may lack it, an operation that
                # generates text).
                want_text=self.want_text,
                # A stream that asked for usage is still estimated when none came (the client
                # left after the finish chunk, the upstream ignored the option), but its text
                # is only measured in bytes: usage almost always comes, so no tokenizer runs.
                token_counter=token_counter,
                decompressor=decompressor,
                operation=self.route.operation,
            )
            self.feed = self._first_body
        except Exception as exc:
            self.metering.failures.failed("llm-metrics", "start reading a response (it is not counted)", exc)
            self.metering.count_error("internal")

    def body(self, chunk: bytes) -> None:
        """One response body chunk (the same as calling :attr:`feed`)."""
        self.feed(chunk)

    def _first_body(self, chunk: bytes) -> None:
        """The first chunk of a body read as it comes: its time, then the extractor's own
        ``feed`` from the next chunk on."""
        if not chunk:
            return
        self.first_chunk = time.perf_counter()
        extractor = self.extractor
        if extractor is not None:
            self.feed = extractor.feed
            extractor.feed(chunk)

    def _json_body(self, chunk: bytes) -> None:
        """A deferred JSON body's chunks: the first kept whole (the usual, only one), a
        second one hands both to an extractor."""
        if not chunk:
            return
        whole = self.whole
        if whole is None:  # the first chunk (a second one finds it kept)
            self.first_chunk = time.perf_counter()
            if len(chunk) <= readers.SMALL_BODY:
                self.whole = chunk
            else:
                self._json_extractor().feed(chunk)
            return
        self.whole = None
        extractor = self._json_extractor()
        extractor.feed(whole)
        extractor.feed(chunk)

    def _json_extractor(self) -> UsageExtractor:
        """The extractor of a deferred JSON body that did not come whole."""
        extractor = self.extractor = UsageExtractor(
            JSON, want_text=self.want_text, token_counter=self.token_counter, operation=self.route.operation
        )
        self.deferred = False
        self.feed = extractor.feed
        return extractor

    def finish(self, outcome: Outcome) -> None:
        if self.finished:
            return
        self.finished = True
        # A finished call reads nothing more; and self.feed may be one of our own bound
        # methods (_first_body, _json_body): a reference cycle that would leave the call,
        # its request view and its parsed body to the cyclic garbage collector.
        self.feed = _ignore
        # One method, not a guard around a helper: a Python call fewer per call.
        try:
            metering = self.metering
            route = self.route
            extractor = self.extractor
            extraction: Extraction | None = None
            if extractor is not None:
                extraction = extractor.close(ended=outcome == COMPLETED, estimate_only=True)
            elif self.deferred:
                whole = self.whole
                if whole is None:  # no body bytes at all
                    extraction = Extraction(None, None, None, JSON, 0, None)
                else:
                    self.whole = None
                    extraction = extract_whole_json(
                        whole, want_text=self.want_text, token_counter=self.token_counter, operation=route.operation
                    )
            # What the extraction said, read once (most calls have one: a deferred JSON body
            # or an extractor), instead of asking ``extraction is not None`` at every use.
            if extraction is not None:
                usage = extraction.usage
                error = extraction.error
                response_model = extraction.model
            else:
                usage = error = response_model = None
            if not self.metered or self.counted_elsewhere:
                return
            status = self.status
            if self.header_counts is not None and status < 400:
                usage = with_header_counts(usage, self.header_counts)
            if usage is not None and route.hidden_output_in_total:
                usage = with_hidden_output(usage)
            # Only LLM calls are counted: a known LLM path, or a body that reported usage on a
            # path include_paths= allows.
            if route.operation is None and usage is None:
                if error is not None and metering.custom is not None:
                    metering.count_error(body_error(error))
                return
            call_view = self.call_view
            if error is not None:
                metering.count_error(body_error(error))
                logger.debug("llm-metrics: body of %s %s not read: %s", call_view.method, call_view.path, error)
            body = call_view._body  # kept by the view once final (see RequestView.body)
            if body is None:
                body = call_view.body
            source: UsageSource = NO_USAGE
            if status >= 400:
                usage = None
            elif usage is not None:
                source = REPORTED
            elif (
                self.want_text
                and extraction is not None
                and extraction.text_tokens > 0
                and metering.estimate
            ):
                prompt = min(tokens_from_bytes(call_view.prompt_bytes), MAX_TOKENS)
                completion = min(extraction.text_tokens, MAX_TOKENS)
                usage = make_usage(prompt, completion, prompt + completion, estimated=True)
                source = ESTIMATED
            request_model = body.get("model")
            if request_model.__class__ is not str or not request_model:
                request_model = route.model
            provider = (
                metering.provider
                or route.provider
                or (extraction.provider if extraction is not None else None)
                or provider_by_headers(call_view)
            )
            # Strings from the request or response: made encodable before any exporter sees them
            # (an ASCII str, the usual case, is kept without the call).
            if request_model is not None and not (request_model.__class__ is str and request_model.isascii()):
                request_model = safe_text(request_model)
            if response_model is not None and not (response_model.__class__ is str and response_model.isascii()):
                response_model = safe_text(response_model)
            if provider is not None and not (provider.__class__ is str and provider.isascii()):
                provider = safe_text(provider)
            operation = route.operation
            schema = metering.schema
            # The call is its own CallContext: its three fields set now, no object built.
            self.provider = provider
            self.operation = operation
            self.model = response_model or request_model
            values = schema.values_of(self.view, self, metering.count_error)
            if self.overrides:
                values = schema.override(values, self.overrides)
            limiter = metering.limiter
            if values in limiter._seen:  # admitted before: SeriesLimiter.admit's first test
                dims = values
            else:
                dims, overflowed = limiter.admit(values)
                if overflowed:
                    metering.count_error("series_overflow")
            fmt = self.fmt
            streamed = fmt in STREAM_FORMATS or (
                fmt == JSON and (body.get("stream") is True or operation in STREAMING_OPERATIONS)
            )
            started = self.started
            first_chunk = self.first_chunk
            trace = self.trace
            trace_id: str | None = None
            span_id: str | None = None
            if trace is not None:
                trace_id, span_id = trace
            duration = time.perf_counter() - started
            first_chunk_s = (first_chunk - started) if streamed and first_chunk else None
            fields = metering.direct_fields
            if fields is not None:  # sinks that only add to sums: no record (Metering.direct_fields)
                for record_fields in fields:
                    try:
                        record_fields(dims, usage, status, outcome, source, duration, first_chunk_s, None, trace_id, span_id)
                    except Exception as exc:
                        metering._record_failed(fields.index(record_fields), exc)
                return
            origin = self.origin
            # Every field of the slotted CallRecord set directly, in its order: the generated
            # __init__ is one more Python call with eighteen arguments (tests/test_call_record.py
            # checks that a delivered record has every field).
            record = _new(CallRecord)
            record.dimensions = dims
            record.usage = usage
            record.usage_source = source
            record.provider = provider
            record.operation = operation
            record.request_model = request_model
            record.response_model = response_model
            record.status = status
            record.outcome = outcome
            record.streamed = streamed
            record.duration_s = duration
            record.time_to_first_chunk_s = first_chunk_s
            record.parse_error = error
            record.origin = origin
            record.request = self.view if origin == "incoming" or self.incoming is not None else None
            record.cost_usd = None
            record.trace_id = trace_id
            record.span_id = span_id
            records = metering.direct_records
            if records is None:
                metering.deliver(record)
            else:  # Metering.deliver with nothing to do but hand the record to the sinks
                for record_fn in records:
                    try:
                        record_fn(record)
                    except Exception as exc:
                        metering._record_failed(records.index(record_fn), exc)
        except Exception as exc:
            self.metering.failures.failed("llm-metrics", "meter a call", exc)
            self.metering.count_error("internal")
