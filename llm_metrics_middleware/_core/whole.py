"""A small JSON response body that came whole, read without the incremental machinery.

Most non-streamed responses reach the middleware as one body message (one WSGI block)
well under :data:`~.readers.SMALL_BODY`. For those, building a
:class:`~.extractor.UsageExtractor` with its findings, text meter and reader, feeding it
once and closing it costs more than the JSON parse itself; :func:`extract_whole_json`
gives the same :class:`~.extractor.Extraction` with one parse and the provider table's
usage shapes, and hands every body it is not sure of to the general path.

The commonest body of all (an OpenAI-format chat completion: plain int counts in its
``usage``, a string ``model``) is read straight to its :class:`~.usage.Usage` and
:class:`~.extractor.Extraction`, without the table walk, the counts tuple and the calls
that normalise it: about a third of a metered call's Python steps. The plain case is only
taken when the provider table tries that shape first (``_CHAT_FIRST``) and every value is
one the general readers keep as it is; anything else goes their way, which decides.
"""

from __future__ import annotations

from typing import Any

from .estimate import TokenCounter
from .extractor import JSON, Extraction, UsageExtractor
from .fastjson import first, value_or_none
from .providers.chat import CHAT_FIRST, CHAT_MARKERS, CHAT_PROVIDER, CHAT_UNBILLED
from .providers.objects import counts_from_object, model_from_object
from .providers.table import PROVIDERS
from .typed import chat_decoder
from .usage import Invalid, make_usage, plain_counts, read_chat, usage_of

_BOM = b"\xef\xbb\xbf"
_new = object.__new__

# The plain chat path stands for the table's own order (see providers/chat.py).
_CHAT_FIRST = CHAT_FIRST
_CHAT_PROVIDER = CHAT_PROVIDER
_CHAT_MARKERS = CHAT_MARKERS
_CHAT_UNBILLED = CHAT_UNBILLED

# The typed decoder of that body (msgspec's, when installed and sure): only when the plain
# path applies and a marker is one of the two counts _plain_counts wants as ints.
_decode_chat = (
    chat_decoder(_CHAT_UNBILLED[0])
    if _CHAT_FIRST and _CHAT_UNBILLED is not None and not _CHAT_MARKERS.isdisjoint(("prompt_tokens", "completion_tokens"))
    else None
)
#: The operations of the providers whose usage is read that way first: only their bodies
#: are worth the typed decode (one of another shape would be decoded for nothing, and a
#: substring test for its counts costs a third of the decode).
_CHAT_OPERATIONS = frozenset(
    op.name
    for p in PROVIDERS
    if p.usage and p.usage[0][0] == ("usage",) and p.usage[0][1][0].read is read_chat
    for op in p.operations
)
if _decode_chat is not None:
    from .typed import UNSET as _UNSET
    from .typed import ChatUsage as _ChatUsage
    from .typed import CompletionDetails as _CompletionDetails
    from .typed import PromptDetails as _PromptDetails


def _plain_chat(value: dict[str, object]) -> Extraction | None:
    """The Extraction of an OpenAI-format chat completion whose usage holds only plain
    counts, as the general path would give it; None when the body is anything else."""
    node = value.get("usage")
    if type(node) is not dict or _CHAT_MARKERS.isdisjoint(node):
        return None
    if _CHAT_UNBILLED is None or value.get(_CHAT_UNBILLED[0]) == _CHAT_UNBILLED[1]:
        return None
    get = node.get
    details = get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    if cached is None and "prompt_cache_hit_tokens" in node:  # DeepSeek's: read_chat judges it
        return None
    details = get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if type(details) is dict else None
    return _plain_counts(value.get("model"), get("prompt_tokens"), get("completion_tokens"), get("total_tokens"), cached, reasoning)


def _typed_chat(data: bytes) -> Extraction | None:
    """:func:`_plain_chat` of a body decoded by msgspec into the few fields it reads (see
    :mod:`.typed`), without building the rest; None when not sure, or not that body."""
    chat = _decode_chat(data)  # type: ignore[misc]
    if chat is None:
        return None
    usage = chat.usage
    if usage.__class__ is not _ChatUsage:
        return None
    # The markers are prompt_tokens and completion_tokens: _plain_counts wants both ints.
    if getattr(chat, _CHAT_UNBILLED[0]) == _CHAT_UNBILLED[1]:  # type: ignore[index]
        return None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details.__class__ is _PromptDetails else None
    if cached is _UNSET:
        cached = None
    if cached is None and usage.prompt_cache_hit_tokens is not _UNSET:
        return None
    details = usage.completion_tokens_details
    reasoning = details.reasoning_tokens if details.__class__ is _CompletionDetails else None
    if reasoning is _UNSET:
        reasoning = None
    return _plain_counts(chat.model, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, cached, reasoning)


def _plain_counts(model: Any, prompt: Any, completion: Any, total: Any, cached: Any, reasoning: Any) -> Extraction | None:
    """The Extraction of these values of a chat completion (None for a count not there)
    when all are plain; None when read_chat must judge them."""
    if model.__class__ is not str or not model:
        return None
    if cached is None:
        cached = 0
    if reasoning is None:
        reasoning = 0
    if not plain_counts(prompt, completion, total, cached, reasoning):
        return None  # read_chat judges them, on the general path
    if reasoning and total == prompt + completion + reasoning:
        completion += reasoning  # xAI reports reasoning beside the completion (read_chat)
    # usage_of's normalisation, for counts that are all there.
    if cached > prompt:
        cached = prompt
    if reasoning > completion:
        reasoning = completion
    if total < prompt + completion:
        total = prompt + completion
    # Extraction's fields inline (a call fewer); the Usage from make_usage, the one place
    # that fills a Usage's fields directly.
    usage = make_usage(prompt, completion, total, cached, reasoning)
    extraction = _new(Extraction)
    extraction.usage = usage
    extraction.model = model
    extraction.provider = _CHAT_PROVIDER
    extraction.format = JSON
    # With usage the text is not measured: the general path's text meter says 0.
    extraction.text_tokens = 0
    extraction.error = None
    return extraction


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
    if _decode_chat is not None and (operation is None or operation in _CHAT_OPERATIONS):
        plain = _typed_chat(data)
        if plain is not None:
            return plain
    value = None
    if data[:3] != _BOM:
        # value_or_none's first step inline (one call fewer on every metered call); what the
        # first parser refuses, value_or_none decides.
        try:
            value = first(data)
        except ValueError:
            value = value_or_none(data)
        except RecursionError:
            pass
    if type(value) is dict:
        if _CHAT_FIRST:
            plain = _plain_chat(value)
            if plain is not None:
                return plain
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
