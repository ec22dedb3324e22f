"""What the package knows about each LLM provider: one table, and what is derived from it.

:mod:`.table` declares the providers; :mod:`.routes` (which API a path is for),
:mod:`.objects` (usage and model in a JSON object), :mod:`.chat` (where OpenAI chat's
shape stands in it) and :mod:`.facts` (field lists, key headers, OpenTelemetry names) are
derived from it; :mod:`.pointers` reads custom formats.
"""

from __future__ import annotations

from .pointers import UsagePointers
from .routes import Route, route_of

__all__ = ["Route", "UsagePointers", "route_of"]
