"""gunicorn settings for the Flask example with several worker processes.

Each worker counts in its own process; prometheus_client's multiprocess mode makes every
``/metrics`` scrape, whichever worker answers it, add up all of them. It needs
``PROMETHEUS_MULTIPROC_DIR`` set before Python starts::

    export PROMETHEUS_MULTIPROC_DIR=/tmp/llm-metrics && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    gunicorn -c examples/flask_app/gunicorn.conf.py 'examples.flask_app.app:app'
"""

import os
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

workers = int(os.environ.get("WEB_CONCURRENCY", "4"))


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR is not set: each worker would report only its own counts. "
            "Export it (an empty, writable directory) before starting gunicorn."
        )
    # Files of an earlier run would be added to this run's counts (and the series it
    # admitted to this run's max_series cap): start from none.
    for pattern in ("*.db", "llm_series_*.admitted"):
        for stale in Path(directory).glob(pattern):
            stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's counters stay (they are totals); its live gauges go.
    multiprocess.mark_process_dead(worker.pid)
