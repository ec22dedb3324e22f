"""Whether the compiled twins of the per-chunk code are used (see :mod:`.template`).

Each compiled module has its Python reference beside it, which is what runs where the
package was installed without a C compiler, and everywhere when
``LLM_METRICS_NO_EXTENSIONS`` is true (as aiohttp's ``AIOHTTP_NO_EXTENSIONS``): to rule the
extensions out when a result looks wrong, and for the tests, which run both. Read once, at
import. The words are those of every on/off variable of ours (:data:`TRUE_WORDS`,
:data:`FALSE_WORDS`, also read by ``_drivers/environment.py``); a value that is neither runs
the Python references here, the safe reading, and is refused with an error that names the
variable when a middleware is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: The environment variable that turns the compiled modules off.
NO_EXTENSIONS_VARIABLE = "LLM_METRICS_NO_EXTENSIONS"

#: How an on/off variable of ours says on, and off (compared lower-cased, stripped).
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def flag(value: str) -> bool | None:
    """An on/off variable's value: True, False (also when empty), or None when unreadable."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if not word or word in FALSE_WORDS:
        return False
    return None


def extensions_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``LLM_METRICS_NO_EXTENSIONS`` asks for the pure-Python code (or cannot
    be read)."""
    env = os.environ if environ is None else environ
    return flag(env.get(NO_EXTENSIONS_VARIABLE, "")) is False


__all__ = ["FALSE_WORDS", "NO_EXTENSIONS_VARIABLE", "TRUE_WORDS", "extensions_enabled", "flag"]
