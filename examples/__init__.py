"""Runnable examples of llm-metrics-middleware (importable so the tests can build them)."""
