"""What the 3scale Service Management API reads and answers: the report form and its errors.

Kept apart from the delivery thread so that the format (field names, the timestamp
layout, which error codes concern the whole service) reads in one place and can change
without touching the threading, and the other way round. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Union
from urllib.parse import urlencode

#: Where reports go, below the backend's URL.
REPORT_PATH = "/transactions.xml"
#: 3scale accepts at most 1000 transactions per report.
MAX_TRANSACTIONS_PER_REPORT = 1000
#: With ``timestamps=True``, calls are summed per application and minute (3scale's finest
#: limit period), and each sum is reported with the start of its minute.
TIMESTAMP_BUCKET_S = 60
#: Error codes that concern the whole service, not one application: splitting the batch
#: would not help.
SERVICE_ERRORS = frozenset({
    "service_token_invalid",
    "service_token_missing",
    "provider_key_invalid",
    "provider_key_or_service_token_required",
    "service_id_invalid",
    "service_id_missing",
    "access_token_invalid",
})
_ERROR_CODE = re.compile(rb"<error\b[^>]*\bcode=\"([^\"]{1,100})\"")

#: ("user_key", key, None) or ("app_id", id, app key or None).
Credential = tuple[str, str, Union[str, None]]
#: A credential and a minute bucket (0 when timestamps are off).
PendingKey = tuple[Credential, int]
#: Applications' summed usage (metric -> amount), as one report sends them.
Batch = list[tuple[PendingKey, dict[str, int]]]


def report_form(service_token: str, service_id: str, batch: Batch) -> bytes:
    """The body of ``POST /transactions.xml`` for ``batch`` (form-encoded, ASCII)."""
    fields: list[tuple[str, str]] = [("service_token", service_token), ("service_id", service_id)]
    for i, ((credential, bucket), usage) in enumerate(batch):
        prefix = f"transactions[{i}]"
        kind, value, secret = credential
        fields.append((f"{prefix}[{kind}]", value))
        if secret is not None:
            fields.append((f"{prefix}[app_key]", secret))
        for metric in sorted(usage):
            fields.append((f"{prefix}[usage][{metric}]", str(usage[metric])))
        if bucket:
            stamp = datetime.fromtimestamp(bucket * TIMESTAMP_BUCKET_S, tz=timezone.utc)
            fields.append((f"{prefix}[timestamp]", stamp.strftime("%Y-%m-%d %H:%M:%S +00:00")))
    return urlencode(fields).encode("ascii")


def error_code(body: bytes) -> str | None:
    """The ``code`` of the ``<error>`` element of a refusal's XML body, if it has one.

    A regular expression, not an XML parser: the body comes from the network and only this
    one attribute matters, so nothing in it (entities, nesting) can cost more than a scan.
    """
    match = _ERROR_CODE.search(body)
    return match.group(1).decode("ascii", "replace") if match else None
