"""The template test of a streamed chunk: the front of :class:`~.extractor.UsageExtractor`.

A chunk of a stream is the same bytes before and after its text (id, model, created,
indices). The extractor learns that head and tail from one chunk whose single text string
the regex found (and that held no usage hint or marker); every later chunk with the same
head and tail, no quote in between and no backslash just before the tail's quote, is that
shape with another string there: it holds neither usage nor other text, and its text is the
bytes in between (escapes as written, as the regex counts them). Those bytes are summed
(or handed to the tokenizer's meter), and nothing else is read. Any other chunk goes to the
extractor's ``_read``.

This runs once per chunk of every stream, so it exists twice: compiled (``_template.c``,
built with the package where a C compiler is present, about a tenth of the instructions)
and here, in Python, which is the reference and what runs where the extension is missing
or ``LLM_METRICS_NO_EXTENSIONS`` is true (see :mod:`.extensions`).
:data:`TemplateFront` is the one in use; ``tests/test_template_front.py`` holds the two to
the same answers.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .extensions import NO_EXTENSIONS_VARIABLE, extensions_enabled

if TYPE_CHECKING:
    from .findings import TextMeter

#: bytes.removeprefix/removesuffix return the bytes object itself when they remove nothing
#: (CPython's implementation; the documentation only promises equal bytes): see feed.
_RETURNS_SELF = sys.implementation.name == "cpython"


class PyTemplateFront:
    """The template test in Python. A subclass defines ``_read(chunk)``, the general path,
    and sets ``_tpl_head`` (bytes while a learnt template applies, else None),
    ``_tpl_tail``, ``_tpl_text`` (a meter for the text, or None to count its bytes in
    ``_tpl_bytes``)."""

    __slots__ = ("_tpl_bytes", "_tpl_head", "_tpl_tail", "_tpl_text")

    _tpl_head: bytes | None
    _tpl_tail: bytes
    _tpl_text: TextMeter | None
    _tpl_bytes: int

    def feed(self, chunk: bytes) -> None:
        """One body chunk: counted here when it is the learnt template, else read."""
        head = self._tpl_head
        if head is not None:
            try:
                # removeprefix/removesuffix take one argument (METH_O), where startswith,
                # endswith and find parse an argument tuple: about half the instructions.
                # On exact bytes CPython returns the object itself when nothing is removed
                # and a new one when something is (head and tail are never empty), so two
                # identity tests say that both were there; elsewhere the lengths do.
                # ``34 in`` (an int) is a memchr; a bytes needle would go through a raised
                # and cleared TypeError first.
                rest = chunk.removeprefix(head)
                between = rest.removesuffix(self._tpl_tail)
                if (
                    chunk.__class__ is bytes
                    and rest is not chunk
                    and between is not rest
                    and (_RETURNS_SELF or len(between) + len(head) + len(self._tpl_tail) == len(chunk))
                    and 34 not in between  # no quote: the tail's quote closes the string
                    and (92 not in between or between[-1:] != b"\\")  # ... and is not escaped
                ):
                    if self._tpl_text is None:
                        self._tpl_bytes += len(between)
                    else:
                        self._tpl_text.add_json_string(between)
                    return
            except Exception:  # not bytes, a bug: the general path decides (and never raises)
                pass
        self._read(chunk)

    def _read(self, chunk: bytes) -> None:
        """The general path: every chunk the template does not account for."""
        raise NotImplementedError


def _compiled() -> type[PyTemplateFront] | None:
    """The compiled TemplateFront, or None where it was not built or is turned off."""
    if not extensions_enabled():
        return None
    try:
        from ._template import TemplateFront as compiled
    except ImportError:
        return None
    return compiled  # type: ignore[no-any-return]


#: The compiled template test where it was built and not turned off, else None.
CTemplateFront: type[PyTemplateFront] | None = _compiled()

#: The template test the extractor is built on.
TemplateFront: type[PyTemplateFront] = CTemplateFront if CTemplateFront is not None else PyTemplateFront

__all__ = ["NO_EXTENSIONS_VARIABLE", "CTemplateFront", "PyTemplateFront", "TemplateFront"]
