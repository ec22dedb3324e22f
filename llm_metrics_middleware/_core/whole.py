"""A small JSON response body that came whole, read without the incremental machinery.

Most non-streamed responses reach the middleware as one body message (one WSGI block)
well under :data:`~.readers.SMALL_BODY`. For those, building a
:class:`~.extractor.UsageExtractor` with its findings, text meter and reader, feeding it
once and closing it costs more than the JSON parse itself; :func:`extract_whole_json`
gives the same :class:`~.extractor.Extraction` with one parse and the provider table's
usage shapes, and hands every body it is not sure of to the general path.
"""

from __future__ import annotations

from .estimate import TokenCounter
from .extractor import JSON, Extraction, UsageExtractor
from .fastjson import value_or_none
from .providers.objects import counts_from_object, model_from_object
from .usage import Invalid, usage_of

_BOM = b"\xef\xbb\xbf"


def extract_whole_json(
    data: bytes, *, want_text: bool = False, token_counter: TokenCounter | None = None, operation: str | None = None
) -> Extraction:
    """What ``UsageExtractor(JSON, want_text=..., token_counter=..., operation=...)`` says
    of ``data`` fed as one chunk and closed: the same answer, for a body of at most
    ``SMALL_BODY`` bytes.

    A JSON object with usage is parsed once and its usage read from the provider table's
    shapes. Anything else (a byte order mark, NDJSON or an array, a body that does not
    parse, a usage object with absurd counts, no usage when the text is to be measured for
    an estimate) goes the general way, which decides and names the error.
    """
    value = value_or_none(data) if data[:3] != _BOM else None
    if type(value) is dict:
        try:
            found = counts_from_object(value)
            model = model_from_object(value)
        except Invalid:
            found = model = value = None  # the general path names the error
        if found is not None:
            counts, provider = found
            # One object's counts are what an accumulator fed them would hold.
            if counts[0] is not None or counts[1] is not None or counts[2] is not None:
                # With usage the text is not measured: the general path's text meter says 0.
                return Extraction(usage_of(counts), model, provider, JSON, 0, None)
            if not want_text:
                return Extraction(None, model, provider, JSON, 0, None)
        elif not want_text and value is not None:
            return Extraction(None, model, None, JSON, 0, None)
    extractor = UsageExtractor(JSON, want_text=want_text, token_counter=token_counter, operation=operation)
    extractor.feed(data)
    return extractor.close()
