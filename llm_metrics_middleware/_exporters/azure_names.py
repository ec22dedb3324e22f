"""What the Azure exporter's metrics are called in Application Insights, and how they are shaped.

One place for the names users see in ``customMetrics`` and in KQL (docs/azure.md quotes
them), the dimension keys the exporter adds, and the SDK settings that give the streams
those names: OpenTelemetry instrument names cannot hold spaces, so the instruments have
plain names and the :func:`views` rename them. Changing a name here changes it for users.
:func:`check_dimensions` holds the configured dimension names against Azure's limits on keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from .namespaces import check_reserved

if TYPE_CHECKING:
    from .._metering.call import Schema

logger = logging.getLogger("llm_metrics_middleware")

PROMPT_TOKENS = "Prompt Tokens"
COMPLETION_TOKENS = "Completion Tokens"
TOTAL_TOKENS = "Total Tokens"
CACHED_TOKENS = "Cached Tokens"
REASONING_TOKENS = "Reasoning Tokens"
ESTIMATED_TOKENS = "Estimated Tokens"
LLM_REQUESTS = "LLM Requests"
REQUEST_DURATION = "LLM Request Duration"
TIME_TO_FIRST_CHUNK = "LLM Time To First Chunk"
METERING_ERRORS = "LLM Metering Errors"
COST = "Cost"

#: Dimension keys the exporter adds to some metrics.
TOKEN_TYPE = "Token Type"
STATUS_CODE = "Status Code"
OUTCOME = "Outcome"
KIND = "Kind"

#: Azure Monitor allows 10 dimension keys per pre-aggregated custom metric.
MAX_DIMENSION_KEYS = 10
#: The Azure exporter drops custom dimensions whose key is longer than this.
MAX_KEY_LENGTH = 150

# instrument name -> Azure metric name. Instrument names are internal to the private
# provider; the Views below rename the streams.
COUNTERS = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": TOTAL_TOKENS,
    "cached_tokens": CACHED_TOKENS,
    "reasoning_tokens": REASONING_TOKENS,
    "estimated_tokens": ESTIMATED_TOKENS,
    "requests": LLM_REQUESTS,
    "metering_errors": METERING_ERRORS,
    "cost": COST,
}
HISTOGRAMS = {
    "request_duration": REQUEST_DURATION,
    "time_to_first_chunk": TIME_TO_FIRST_CHUNK,
}
#: Token-limit instruments (only fed when a middleware has ``limits=``).
LIMIT_COUNTERS = {
    "limit_authorized_calls": "LLM Limit Authorized Calls",
    "limit_limited_calls": "LLM Limit Limited Calls",
    "limit_authorized_tokens": "LLM Limit Authorized Tokens",
}
LIMIT_GAUGE = ("limit_tokens", "LLM Limit Tokens")
LIMIT = "Limit"
WINDOW_SECONDS = "Window Seconds"
#: An observable gauge that reports nothing; its callback feeds the interval's sums to the SDK.
DRAIN_INSTRUMENT = "interval_sums"

#: Dimension keys each metric carries besides the configured dimensions.
EXTRA_KEYS: Mapping[str, tuple[str, ...]] = {
    ESTIMATED_TOKENS: (TOKEN_TYPE,),
    LLM_REQUESTS: (STATUS_CODE, OUTCOME),
}

#: The Azure exporter's preferred temporality (``APPLICATION_INSIGHTS_METRIC_TEMPORALITIES``
#: in its ``export/metrics/_exporter.py``): delta for counters and histograms.
TEMPORALITY: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    ObservableGauge: AggregationTemporality.CUMULATIVE,
    ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
    UpDownCounter: AggregationTemporality.CUMULATIVE,
}


def views(max_attribute_sets: int) -> list[View]:
    """The SDK Views of one namespace's provider: Azure names, no histogram buckets, the cardinality cap."""
    out: list[View] = []
    for instrument, name in COUNTERS.items():
        out.append(View(instrument_name=instrument, name=name, aggregation_cardinality_limit=max_attribute_sets))
    for instrument, name in (*LIMIT_COUNTERS.items(), LIMIT_GAUGE):
        out.append(View(instrument_name=instrument, name=name, aggregation_cardinality_limit=max_attribute_sets))
    for instrument, name in HISTOGRAMS.items():
        # Application Insights keeps sum, count, min and max of a histogram; buckets would
        # only cost memory.
        out.append(View(
            instrument_name=instrument,
            name=name,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=()),
            aggregation_cardinality_limit=max_attribute_sets,
        ))
    return out


def check_dimensions(schema: Schema) -> None:
    """Refuse dimension names Application Insights would drop or that clash with ours; warn
    when a metric gets more dimension keys than Metrics Explorer can split by."""
    names = schema.names
    check_reserved(names, (TOKEN_TYPE, STATUS_CODE, OUTCOME), "a dimension the Azure exporter adds")
    for name in names:
        if len(name) > MAX_KEY_LENGTH:
            raise ValueError(
                f"dimension name {name[:40]!r}... is {len(name)} characters; Application Insights drops "
                f"custom dimension keys over {MAX_KEY_LENGTH}; shorten it"
            )
    base = len(schema.names)
    over = {
        metric: base + len(EXTRA_KEYS.get(metric, ()))
        for metric in (*COUNTERS.values(), *HISTOGRAMS.values())
        if metric != METERING_ERRORS and base + len(EXTRA_KEYS.get(metric, ())) > MAX_DIMENSION_KEYS
    }
    if over:
        detail = ", ".join(f"{metric!r} {keys}" for metric, keys in over.items())
        logger.warning(
            "Azure Monitor keeps at most %d dimension keys per pre-aggregated custom metric; with the %d "
            "dimensions of namespace %r these metrics have more: %s. Metrics Explorer will not split or "
            "filter them by all dimensions (the customMetrics table still holds every dimension). "
            "Configure at most %d dimensions to stay within the limit.",
            MAX_DIMENSION_KEYS,
            base,
            schema.namespace,
            detail,
            MAX_DIMENSION_KEYS - max(len(extra) for extra in EXTRA_KEYS.values()),
        )
