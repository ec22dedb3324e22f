"""An SSE event's model and usage, read by msgspec's typed decoding (the ``accel`` extra),
when sure.

The SSE reader parses an event's data in full while the stream's model is not known (its
first event, in the usual stream) and whenever the event may hold usage (the usage chunk).
A full parse builds every choice and delta as Python objects, only to free them: about
a quarter of what such an event costs. What :meth:`~.findings.Findings.on_object` takes
from the object is its model and its counts, and for the commonest events both can be read
from a few top-level keys:

* ``model``: the first of the table's model paths (``providers/chat.py`` checks that);
* no counts, when ``usage`` is null or absent and no other key that could lead to usage
  (:data:`~.providers.objects.READ_KEYS`: ``message``, ``delta``, Ollama's top-level
  counts...) is there at all: :func:`~.providers.objects.counts_from_object` would rule
  the object out with the same keys;
* OpenAI chat's counts, when ``usage`` holds plain counts (read_chat's plain path: every
  count an int it keeps as it is) and the object is not the unbilled one.

:func:`read_event` decodes those keys into a Struct and skips the rest unbuilt. It answers
only where it is sure, as :mod:`.typed` does (a body that is not ASCII is checked as UTF-8
first; one over 2 KB, which could nest past orjson's limit, is left alone), and returns None
for everything else: the caller then parses in full, which decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .providers.chat import CHAT_FIRST, CHAT_MARKERS, CHAT_PROVIDER, CHAT_UNBILLED
from .providers.objects import READ_KEYS
from .typed import chat_decoder
from .usage import MAX_TOKENS, Counts, with_outside_reasoning

#: The top-level keys read besides model, usage and the unbilled key: each must be absent.
_OTHERS = tuple(sorted(READ_KEYS - {"model", "usage", CHAT_UNBILLED[0]})) if READ_KEYS and CHAT_UNBILLED else ()

_decode: Callable[[bytes | bytearray], Any] | None = (
    chat_decoder(CHAT_UNBILLED[0], _OTHERS)
    if CHAT_FIRST
    and CHAT_UNBILLED is not None
    and CHAT_UNBILLED[0] not in ("model", "usage")  # the Struct's third field (see below)
    and READ_KEYS is not None
    and not CHAT_MARKERS.isdisjoint(("prompt_tokens", "completion_tokens"))  # both are read
    else None
)
if _decode is not None:
    import msgspec

    from .typed import UNSET as _UNSET
    from .typed import ChatUsage as _ChatUsage
    from .typed import CompletionDetails as _CompletionDetails
    from .typed import PromptDetails as _PromptDetails

    _astuple = msgspec.structs.astuple
    #: How many fields come before the other keys' (model, usage, the unbilled key).
    _FIRST_OTHER = 3
    _ALL_UNSET = len(_OTHERS)

#: The provider an event read here names when it has counts.
PROVIDER = CHAT_PROVIDER


def read_event(data: bytes | bytearray) -> tuple[str, Counts | None] | None:
    """``(model, counts)`` of one event's data, as :meth:`Findings.on_object` would take
    them from the parsed object (counts None: the object holds no usage); None when not
    sure, or where typed decoding is off."""
    decode = _decode
    if decode is None:
        return None
    event = decode(data)  # None when not sure (too long, not UTF-8, not valid, not an object...)
    if event is None:
        return None
    model = event.model
    if model.__class__ is not str or not model:
        return None  # a later model path may say: the full parse decides
    values = _astuple(event)
    if values[_FIRST_OTHER:].count(_UNSET) != _ALL_UNSET:
        return None  # a key that may lead to usage: the table's readers decide
    usage = event.usage
    if usage is None or usage is _UNSET:
        return model, None
    if usage.__class__ is not _ChatUsage or values[2] == CHAT_UNBILLED[1]:  # type: ignore[index]
        return None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details.__class__ is _PromptDetails else None
    details = usage.completion_tokens_details
    reasoning = details.reasoning_tokens if details.__class__ is _CompletionDetails else None
    prompt, completion, total = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
    # read_chat's plain path, and only it: five ints it keeps as they are.
    if not (
        prompt.__class__ is int
        and completion.__class__ is int
        and total.__class__ is int
        and cached.__class__ is int
        and reasoning.__class__ is int
        and 0 <= prompt | completion | total | cached | reasoning <= MAX_TOKENS
    ):
        return None
    if reasoning:
        completion = with_outside_reasoning(prompt, completion, total, reasoning)
    return model, (prompt, completion, total, cached, reasoning, None, None)


__all__ = ["PROVIDER", "read_event"]
