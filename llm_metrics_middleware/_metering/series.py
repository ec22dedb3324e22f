"""The ``max_series`` cap: at most that many distinct dimension tuples per middleware.

In one process the cap is a set in memory. Under a pre-fork server in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) every worker writes its own series to
the shared directory, and workers come and go (gunicorn's ``--max-requests``): a cap per
process would let each new worker admit ``max_series`` more. There the admitted tuples are
kept in one file of the directory instead, one 16-hex-digit digest per line, appended under
an exclusive ``flock``: every worker and every later worker reads the same admissions, so
the cap holds across all of them and across restarts that keep the directory (clear it with
the ``*.db`` files when you start afresh).

The file is touched only when a process meets a tuple it has not admitted yet: at most
``max_series`` appends in all, one read of what others appended since, and once the file
is full, never again (a full file no longer changes). Its size is bounded by the cap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

from .dimensions import OVERFLOW

try:
    import fcntl
except ImportError:  # Windows: no pre-fork servers, the per-process cap applies
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("llm_metrics_middleware")

#: One line of the shared file: 16 hex digits and a newline.
_LINE = 17


class SeriesLimiter:
    """Caps distinct dimension tuples; past the cap, new tuples become all-overflow.

    Sums stay exact: overflowed calls are still counted, under ``__overflow__`` values.
    Memory is bounded by the cap.
    """

    def __init__(self, max_series: int) -> None:
        if not isinstance(max_series, int) or isinstance(max_series, bool) or max_series < 1:
            raise ValueError(f"max_series must be a positive int, got {max_series!r}")
        self.max_series = max_series
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self.overflowed = 0

    def admit(self, values: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        """The values to export, and whether they overflowed."""
        if values in self._seen:
            return values, False
        with self._lock:
            if values in self._seen or self._admit_new(values):
                self._seen.add(values)
                return values, False
            self.overflowed += 1
        return (OVERFLOW,) * len(values), True

    def _admit_new(self, values: tuple[str, ...]) -> bool:
        return len(self._seen) < self.max_series


class SharedSeriesLimiter(SeriesLimiter):
    """The cap shared by every process that uses ``path`` (see the module docstring)."""

    def __init__(self, max_series: int, path: str) -> None:
        super().__init__(max_series)
        self.path = path
        self._shared: set[bytes] = set()  # digests admitted by any process, as far as read
        self._offset = 0  # bytes of the file already read
        self._full = False
        self._failed = False

    def _admit_new(self, values: tuple[str, ...]) -> bool:
        digest = hashlib.sha256(json.dumps(values).encode("utf-8", "replace")).hexdigest()[:16].encode()
        if digest in self._shared:
            return True
        if self._full:
            return False
        if self._failed:
            return super()._admit_new(values)
        try:
            return self._admit_shared(digest)
        except OSError:
            self._failed = True
            logger.warning(
                "llm-metrics: cannot share the max_series cap through %s; each process caps its own "
                "series from now on. Make PROMETHEUS_MULTIPROC_DIR writable.", self.path, exc_info=True,
            )
            return super()._admit_new(values)

    def _admit_shared(self, digest: bytes) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            # Never read more than a full file's worth: a bigger file counts as full.
            limit = self.max_series * _LINE
            if size > self._offset and self._offset < limit:
                data = os.pread(fd, min(size, limit) - self._offset, self._offset)
                end = data.rfind(b"\n") + 1
                self._shared.update(data[:end].split())
                self._offset += end
            if digest in self._shared:
                return True
            if len(self._shared) >= self.max_series or size >= limit:
                self._full = True
                return False
            os.write(fd, digest + b"\n")
            self._shared.add(digest)
            return True
        finally:
            os.close(fd)  # closing releases the lock


def series_limiter(max_series: int, namespace: str, labels: tuple[str, ...]) -> SeriesLimiter:
    """A per-process limiter, or one shared through ``PROMETHEUS_MULTIPROC_DIR`` when set."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or fcntl is None:
        return SeriesLimiter(max_series)
    key = hashlib.sha256(json.dumps([namespace, *labels]).encode("utf-8", "replace")).hexdigest()[:16]
    return SharedSeriesLimiter(max_series, os.path.join(directory, f"llm_series_{key}.admitted"))
