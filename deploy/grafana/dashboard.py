"""Writes ``llm-metrics.json``, the Grafana dashboard, from the panel list below.

The JSON is what users import (Dashboards > New > Import); this script is where it is
edited, so the ~30 panels share one label selector and one layout instead of thirty
hand-kept copies. ``tests/test_deploy.py`` checks that the committed JSON is what this
script writes, and runs every query on a real Prometheus.

    python deploy/grafana/dashboard.py   # rewrites deploy/grafana/llm-metrics.json

The queries use the raw metrics with ``$__rate_interval`` (so the dashboard works on any
zoom and without the recording rules); ``deploy/prometheus/llm-metrics-rules.yml``
records the same rates at 5 minutes for alerts and for long ranges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "llm-metrics.json"

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Every panel of token metrics filters on the three template variables. `=~".*"` (the
# "All" value) also matches series without the label, so a deployment that does not
# configure one of these dimensions still sees its data.
SEL = 'api_id=~"$api_id", user_id=~"$user_id", model=~"$model"'
RI = "$__rate_interval"


def rate(metric: str, by: str = "", extra: str = "") -> str:
    labels = SEL + (", " + extra if extra else "")
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{labels}}}[{RI}]))"


def increase(metric: str, by: str = "", extra: str = "") -> str:
    labels = SEL + (", " + extra if extra else "")
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (increase({metric}{{{labels}}}[$__range]))"


def quantile(q: float, histogram: str, by: str = "") -> str:
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({histogram}_bucket{{{SEL}}}[{RI}])))"


def ratio(numerator: str, denominator: str) -> str:
    # `clamp_min(..., 1e-9)` keeps an idle period at 0 rather than NaN; no tokens at all
    # returns no data, which Grafana shows as "No data", honestly.
    return f"({numerator}) / clamp_min({denominator}, 1e-9)"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1
        self.panels: list[dict[str, Any]] = []

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, kind: str, title: str, description: str, targets: list[tuple[str, str]], *, w: int = 12,
              h: int = 8, unit: str = "short", instant: bool = False, stack: bool = False,
              options: dict[str, Any] | None = None, exemplars: bool = False) -> None:
        """``exemplars``: show the exemplars of the series the queries read (a dot per traced
        call, linked to its trace), for histograms the exporter gives exemplars to."""
        if self.x + w > 24:
            self._newline()
        defaults: dict[str, Any] = {"unit": unit}
        if kind == "timeseries":
            defaults["custom"] = {"fillOpacity": 15 if stack else 5, "lineWidth": 1, "showPoints": "never",
                                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        if unit == "percentunit":
            defaults.update(min=0, max=1)
        panel: dict[str, Any] = {
            "type": kind,
            "title": title,
            "description": description,
            "id": self._id(),
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
            "targets": [
                {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                 "instant": instant, "range": not instant, "editorMode": "code", **({"exemplar": True} if exemplars else {})}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "stat":
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                "colorMode": "value", "graphMode": "none", "textMode": "auto", **(options or {})}
        if kind == "timeseries":
            panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                "tooltip": {"mode": "multi", "sort": "desc"}, **(options or {})}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,  # on time range change: new users and models appear
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "regex": "",
        "hide": 0,
        "options": [],
    }


def build() -> dict[str, Any]:
    g = Layout()

    g.row("Tokens")
    g.panel("stat", "Tokens", "All tokens counted in the time range (prompt + completion; estimates included).",
            [(increase("llm_tokens_total"), "")], w=4, h=4, instant=True)
    g.panel("stat", "Prompt tokens", "Input tokens in the time range, cached ones included.",
            [(increase("llm_prompt_tokens_total"), "")], w=4, h=4, instant=True)
    g.panel("stat", "Completion tokens", "Output tokens in the time range, reasoning included.",
            [(increase("llm_completion_tokens_total"), "")], w=4, h=4, instant=True)
    g.panel("stat", "Estimated share",
            "Part of the tokens that was estimated because the response reported no usage "
            "(OpenAI-compatible streams without stream_options.include_usage). High means the figures are approximate.",
            [(ratio(increase("llm_estimated_tokens_total"), increase("llm_tokens_total")), "")],
            w=4, h=4, unit="percentunit", instant=True)
    g.panel("stat", "Cached share of prompt", "Prompt tokens read from the provider's prompt cache, over all prompt tokens.",
            [(ratio(increase("llm_cached_tokens_total"), increase("llm_prompt_tokens_total")), "")],
            w=4, h=4, unit="percentunit", instant=True)
    g.panel("stat", "Reasoning share of completion", "Completion tokens spent on reasoning, over all completion tokens.",
            [(ratio(increase("llm_reasoning_tokens_total"), increase("llm_completion_tokens_total")), "")],
            w=4, h=4, unit="percentunit", instant=True)
    g.panel("timeseries", "Tokens per second by user", "rate of llm_tokens_total, summed over replicas and workers.",
            [(rate("llm_tokens_total", "user_id"), "{{user_id}}")], stack=True)
    g.panel("timeseries", "Tokens per second by model", "rate of llm_tokens_total by the model the response named.",
            [(rate("llm_tokens_total", "model"), "{{model}}")], stack=True)
    g.panel("timeseries", "Prompt vs completion tokens per second", "Input and output tokens, stacked.",
            [(rate("llm_prompt_tokens_total"), "prompt"), (rate("llm_completion_tokens_total"), "completion")],
            stack=True)
    g.panel("timeseries", "Estimated, cached and reasoning share",
            "Estimated: of all tokens. Cached: of prompt tokens. Reasoning: of completion tokens.",
            [(ratio(rate("llm_estimated_tokens_total"), rate("llm_tokens_total")), "estimated"),
             (ratio(rate("llm_cached_tokens_total"), rate("llm_prompt_tokens_total")), "cached"),
             (ratio(rate("llm_reasoning_tokens_total"), rate("llm_completion_tokens_total")), "reasoning")],
            unit="percentunit")
    g.panel("bargauge", "Top users by tokens (time range)", "The ten users with the most tokens in the time range.",
            [(f"topk(10, {increase('llm_tokens_total', 'user_id')})", "{{user_id}}")],
            instant=True, options={"orientation": "horizontal", "displayMode": "gradient",
                                   "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})
    g.panel("table", "Tokens by user and model (time range)", "Prompt, completion and total tokens per user and model.",
            [(increase("llm_tokens_total", "user_id, model"), "total")], instant=True,
            options={"showHeader": True})

    g.row("Cost")
    g.panel("stat", "Cost (USD, time range)", "llm_cost_usd_total: set pricing= on the middleware to count it.",
            [(increase("llm_cost_usd_total"), "")], w=6, h=8, unit="currencyUSD", instant=True)
    g.panel("timeseries", "Cost per hour by user (USD)", "rate of llm_cost_usd_total, times 3600.",
            [(rate("llm_cost_usd_total", "user_id") + " * 3600", "{{user_id}}")], w=9, unit="currencyUSD", stack=True)
    g.panel("bargauge", "Cost by model (USD, time range)", "Calls whose model has no price add no cost.",
            [(increase("llm_cost_usd_total", "model"), "{{model}}")], w=9, unit="currencyUSD", instant=True,
            options={"orientation": "horizontal", "displayMode": "gradient",
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})

    g.row("Requests")
    g.panel("timeseries", "LLM calls per second by outcome",
            "completed: last byte sent; disconnected: the client left; error: the app raised.",
            [(rate("llm_requests_total", "outcome"), "{{outcome}}")], unit="reqps", stack=True)
    g.panel("timeseries", "LLM calls per second by status", "HTTP status of the metered responses.",
            [(rate("llm_requests_total", "status"), "{{status}}")], unit="reqps", stack=True)
    g.panel("timeseries", "Calls by how usage was obtained",
            "reported by the provider, estimated from the streamed text, or none (errors, no usage).",
            [(rate("llm_requests_total", "usage"), "{{usage}}")], unit="reqps", stack=True)
    g.panel("timeseries", "Error ratio", "Share of calls with status >= 400 or outcome error.",
            [(ratio(rate("llm_requests_total", extra='status=~"[45].."') + " or vector(0)",
                    rate("llm_requests_total")), "status >= 400"),
             (ratio(rate("llm_requests_total", extra='outcome="error"') + " or vector(0)",
                    rate("llm_requests_total")), "outcome error")],
            unit="percentunit")

    g.row("Latency")
    # The duration histogram carries an exemplar per series (the latest traced call): a
    # slow point links to its trace. Time to first chunk has none.
    g.panel("timeseries", "Duration (request to last byte)", "Percentiles of llm_request_duration_seconds.",
            [(quantile(q, "llm_request_duration_seconds"), f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)], unit="s", exemplars=True)
    g.panel("timeseries", "Time to first chunk (streams)", "Percentiles of llm_time_to_first_chunk_seconds.",
            [(quantile(q, "llm_time_to_first_chunk_seconds"), f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)], unit="s")
    g.panel("timeseries", "p90 duration by model", "",
            [(quantile(0.9, "llm_request_duration_seconds", "model"), "{{model}}")], unit="s", exemplars=True)
    g.panel("timeseries", "p90 time to first chunk by model", "",
            [(quantile(0.9, "llm_time_to_first_chunk_seconds", "model"), "{{model}}")], unit="s")

    g.row("Metering health")
    g.panel("timeseries", "Metering errors per second by kind",
            "Bodies that could not be read, values refused, exporter failures (llm_metering_errors_total).",
            [(f"sum by (kind) (rate(llm_metering_errors_total[{RI}]))", "{{kind}}")], stack=True)
    g.panel("stat", "Series overflow (time range)",
            "Calls whose new dimension combination went past max_series and were exported as __overflow__. "
            "Non-zero: raise max_series or drop a high-cardinality dimension.",
            [('sum(increase(llm_metering_errors_total{kind="series_overflow"}[$__range])) or vector(0)', "")],
            w=6, instant=True)
    g.panel("stat", "Overflowed share of calls (time range)", "Calls exported with every dimension set to __overflow__.",
            [(ratio('sum(increase(llm_requests_total{user_id="__overflow__"}[$__range])) or vector(0)',
                    "sum(increase(llm_requests_total[$__range]))"), "")], w=6, unit="percentunit", instant=True)

    g.row("Token limits")
    g.panel("timeseries", "Limit budget and tokens authorized per window",
            "llm_limit_tokens is each limit's budget per key and window; the tokens authorized are summed over every "
            "key of the limit, so with a per-user key compare them with the budget times the number of users.",
            [("max by (limit, window_seconds) (llm_limit_tokens)", "{{limit}} budget per {{window_seconds}} s"),
             (f"sum by (limit) (rate(llm_limit_authorized_tokens_total[{RI}]))", "{{limit}} tokens/s authorized")])
    g.panel("timeseries", "Calls authorized and limited per second", "A limited call was answered 429 without reaching the app.",
            [(f"sum by (limit) (rate(llm_limit_authorized_calls_total[{RI}]))", "{{limit}} authorized"),
             (f"sum by (limit) (rate(llm_limit_limited_calls_total[{RI}]))", "{{limit}} limited")], unit="reqps")
    g.panel("bargauge", "Limited share of calls (time range)", "Per limit: limited / (authorized + limited).",
            [(ratio("sum by (limit) (increase(llm_limit_limited_calls_total[$__range]))",
                    "sum by (limit) (increase(llm_limit_authorized_calls_total[$__range])) "
                    "+ sum by (limit) (increase(llm_limit_limited_calls_total[$__range]))"), "{{limit}}")],
            unit="percentunit", instant=True,
            options={"orientation": "horizontal", "displayMode": "gradient",
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})
    g.panel("timeseries", "Per-user tokens against the hourly budget",
            "Each user's tokens in the last hour over the budget of the hourly limits keyed by User ID.",
            [("sum by (user_id) (increase(llm_tokens_total{" + SEL + "}[1h])) / on () group_left () "
              'max(llm_limit_tokens{window_seconds="3600"})', "{{user_id}}")], unit="percentunit")

    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "The Prometheus that scrapes /metrics",
                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *({"type": "panel", "id": kind, "name": name, "version": ""}
              for kind, name in (("bargauge", "Bar gauge"), ("stat", "Stat"), ("table", "Table"),
                                 ("timeseries", "Time series"))),
        ],
        "title": "LLM token metrics",
        "uid": "llm-metrics-middleware",
        "description": "Token usage, cost, latency and limits from llm-metrics-middleware (namespace llm).",
        "tags": ["llm", "tokens", "llm-metrics-middleware"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 38,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            variable("api_id", "API", "label_values(llm_requests_total, api_id)"),
            variable("user_id", "User", 'label_values(llm_requests_total{api_id=~"$api_id"}, user_id)'),
            variable("model", "Model", 'label_values(llm_requests_total{api_id=~"$api_id", user_id=~"$user_id"}, model)'),
        ]},
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
