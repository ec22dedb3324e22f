"""Whether the compiled twins of the per-chunk code are used (see :mod:`.template`).

Each compiled module has its Python reference beside it, which is what runs where the
package was installed without a C compiler, and everywhere when
``LLM_METRICS_NO_EXTENSIONS`` is set to anything but ``""`` or ``0`` (as aiohttp's
``AIOHTTP_NO_EXTENSIONS``): to rule the extensions out when a result looks wrong, and for
the tests, which run both. Read once, at import.
"""

from __future__ import annotations

import os

#: The environment variable that turns the compiled modules off.
NO_EXTENSIONS_VARIABLE = "LLM_METRICS_NO_EXTENSIONS"


def extensions_enabled() -> bool:
    """False when ``LLM_METRICS_NO_EXTENSIONS`` asks for the pure-Python code."""
    return os.environ.get(NO_EXTENSIONS_VARIABLE, "") in ("", "0")


__all__ = ["NO_EXTENSIONS_VARIABLE", "extensions_enabled"]
