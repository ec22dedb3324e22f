"""Thin drivers that feed the metering layer: ASGI and WSGI middlewares."""
