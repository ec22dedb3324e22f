"""The price of a call: ``pricing=`` of both middlewares.

Three ways to price, chosen once at construction:

- ``pricing=None`` (default): no cost; ``CallRecord.cost_usd`` stays None.
- ``pricing="genai-prices"``: the `genai-prices` package's bundled price data, looked up by
  provider and model, priced by its ``calc_price`` exactly as it prices the call: cache
  reads, cache writes (5-minute and 1-hour), reasoning, per-request fees, tiered prices and
  the prices in force at the request's time. ``calc_price`` reads data held in memory and
  never fetches; the only fetching in that package is its ``UpdatePrices`` background
  thread, which only an app that starts it itself runs (and whose prices it then uses).
- a :class:`Price` (one flat price for every model, as Gravitee's token tracking policy
  configures it) or a mapping of model name to :class:`Price`: the response's model
  matches a key exactly, else the longest key that is a prefix of it.

A model without a price adds no cost (its tokens are still counted); each such model is
counted once in ``llm_metering_errors_total{kind="unpriced_model"}`` and logged once.

Usage meanings (see :mod:`.._core.usage`): ``prompt_tokens`` includes cache reads and
writes, ``completion_tokens`` includes reasoning. A price applies to each part once:
uncached input at ``input``, cache reads at ``cached_input``, cache writes at
``cache_write_input`` (1-hour writes at ``cache_write_1h_input``), output at ``output``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Union

from .._core.usage import Usage

if TYPE_CHECKING:
    from .call import CallRecord

logger = logging.getLogger("llm_metrics_middleware")

GENAI_PRICES: Literal["genai-prices"] = "genai-prices"
_PER_MILLION = 1_000_000

#: Our provider names (OpenTelemetry's ``gen_ai.provider.name`` values) -> genai-prices
#: provider ids. A name not listed is given as None, and genai-prices picks the provider
#: from the model name (``claude...`` -> anthropic).
GENAI_PROVIDER_IDS: Mapping[str, str | None] = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "aws.bedrock": "aws",
    "cohere": "cohere",
    "mistral_ai": "mistral",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "groq": "groq",
    "perplexity": "perplexity",
    "x_ai": "x-ai",
    "openrouter": "openrouter",
    "together": "together",
    "fireworks": "fireworks",
    "cerebras": "cerebras",
}
#: Provider names that may stand for any OpenAI-compatible server.
_OPENAI_COMPATIBLE = frozenset({"openai"})
#: Self-hosted servers: their tokens cost nothing per token, whatever the model is called.
_SELF_HOSTED = frozenset({"ollama"})

#: Distinct unpriced models remembered (and logged) at most; model names come from
#: responses, so a hostile upstream could send endless new ones.
MAX_UNPRICED_MODELS = 1000
#: Model -> matched price cache for mapping lookups, emptied when it fills.
_MATCH_CACHE_SIZE = 1024


def _rate(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Price({name}=...) takes USD per million tokens as a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Price:
    """A model's price in USD per million tokens (``Price(2.5, 10)``: $2.50 in, $10 out).

    - ``input``: uncached prompt tokens; ``output``: completion tokens, reasoning included.
    - ``cached_input``: prompt tokens read from the provider's cache (None: at ``input``).
    - ``cache_write_input``: prompt tokens written to the cache (Anthropic, Bedrock; None:
      at ``input``); ``cache_write_1h_input``: those written for one hour (None: at
      ``cache_write_input``).
    - ``reasoning``: reasoning tokens, for a provider that bills them apart (None: at
      ``output``).
    - ``per_call``: a fixed fee per call in USD (not per million).
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write_input: float | None = None
    cache_write_1h_input: float | None = None
    reasoning: float | None = None
    per_call: float = 0.0

    def __post_init__(self) -> None:
        for name in ("input", "output", "per_call"):
            object.__setattr__(self, name, _rate(name, getattr(self, name)))
        for name in ("cached_input", "cache_write_input", "cache_write_1h_input", "reasoning"):
            object.__setattr__(self, name, _rate(name, getattr(self, name), optional=True))

    @classmethod
    def per_tokens(
        cls, input_value: float, input_unit: float, output_value: float, output_unit: float
    ) -> Price:
        """A price of ``input_value`` USD per ``input_unit`` tokens (and likewise for output),
        the shape of Gravitee's pricing (``inputPriceValue`` per ``inputPriceUnit``)."""
        for name, unit in (("input_unit", input_unit), ("output_unit", output_unit)):
            if isinstance(unit, bool) or not isinstance(unit, (int, float)) or not unit > 0 or not math.isfinite(unit):
                raise ValueError(f"{name} is a number of tokens > 0 (1000000 for a price per million), got {unit!r}")
        return cls(
            input=_PER_MILLION * _rate("input_value", input_value) / input_unit,  # type: ignore[operator]
            output=_PER_MILLION * _rate("output_value", output_value) / output_unit,  # type: ignore[operator]
        )

    @classmethod
    def from_gravitee(cls, pricing: Mapping[str, Any]) -> Price:
        """Gravitee's ``pricing`` object as it is written in the policy's configuration:
        ``{"inputPriceValue": 0.4, "inputPriceUnit": 1000000, "outputPriceValue": 0.8,
        "outputPriceUnit": 1000000}``. Like Gravitee, cached input is priced as input."""
        keys = ("inputPriceValue", "inputPriceUnit", "outputPriceValue", "outputPriceUnit")
        missing = [key for key in keys if key not in pricing]
        if missing:
            raise ValueError(f"Gravitee pricing needs {', '.join(keys)}; {', '.join(missing)} missing in {dict(pricing)!r}")
        return cls.per_tokens(*(pricing[key] for key in keys))

    def cost(self, usage: Usage) -> float:
        """USD for one call's usage."""
        prompt = usage.prompt_tokens
        cached = min(usage.cached_tokens, prompt)
        written = min(usage.cache_write_tokens, prompt - cached)
        written_1h = min(usage.cache_write_1h_tokens, written)
        completion = usage.completion_tokens
        reasoning = min(usage.reasoning_tokens, completion)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write_input is None else self.cache_write_input
        write_1h_rate = write_rate if self.cache_write_1h_input is None else self.cache_write_1h_input
        reasoning_rate = self.output if self.reasoning is None else self.reasoning
        micro = (
            (prompt - cached - written) * self.input
            + cached * cached_rate
            + (written - written_1h) * write_rate
            + written_1h * write_1h_rate
            + (completion - reasoning) * self.output
            + reasoning * reasoning_rate
        )
        return micro / _PER_MILLION + self.per_call


PricingOption = Union[None, Literal["genai-prices"], Price, Mapping[str, Price]]


class _Pricer:
    """Prices calls; returns None for a model it has no price for."""

    def price(self, usage: Usage, model: str, provider: str | None, call: CallRecord) -> float | None:
        raise NotImplementedError


class _FlatPricer(_Pricer):
    def __init__(self, price: Price) -> None:
        self._price = price

    def price(self, usage: Usage, model: str, provider: str | None, call: CallRecord) -> float | None:
        return self._price.cost(usage)


class _TablePricer(_Pricer):
    """Exact key, else the longest key that is a prefix of the model."""

    def __init__(self, table: Mapping[str, Price]) -> None:
        self._table = dict(table)
        self._by_length = sorted(self._table, key=len, reverse=True)
        self._cache: dict[str, Price | None] = {}

    def match(self, model: str) -> Price | None:
        cache = self._cache
        if model in cache:
            return cache[model]
        found = self._lookup(model)
        if found is None and model.startswith("models/"):
            found = self._lookup(model[7:])  # Gemini's "models/gemini-2.5-flash"
        if len(cache) >= _MATCH_CACHE_SIZE:
            cache.clear()
        cache[model] = found
        return found

    def _lookup(self, model: str) -> Price | None:
        found = self._table.get(model)
        if found is None:
            for key in self._by_length:
                if model.startswith(key):
                    return self._table[key]
        return found

    def price(self, usage: Usage, model: str, provider: str | None, call: CallRecord) -> float | None:
        found = self.match(model)
        return found.cost(usage) if found is not None else None


class _GenaiPricer(_Pricer):
    """``genai_prices.calc_price`` with the call's provider, model, usage and time."""

    def __init__(self) -> None:
        try:
            import genai_prices
        except ImportError as exc:
            raise ImportError(
                "pricing='genai-prices' needs the genai-prices package: pip install 'llm-metrics-middleware[pricing]'"
            ) from exc
        self._calc = genai_prices.calc_price
        self._usage = genai_prices.Usage
        # Load the bundled data now (a large module, a fraction of a second) rather than on
        # the first metered call.
        try:
            self._calc(self._usage(input_tokens=1, output_tokens=1), "gpt-4o", provider_id="openai")
        except Exception:
            pass  # a data set without that model: the data is loaded all the same

    def price(self, usage: Usage, model: str, provider: str | None, call: CallRecord) -> float | None:
        if provider in _SELF_HOSTED:
            return None
        provider_id = GENAI_PROVIDER_IDS.get(provider) if provider is not None else None
        counts: dict[str, int] = {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
        }
        if usage.cached_tokens:
            counts["cache_read_tokens"] = usage.cached_tokens
        if usage.cache_write_tokens:
            counts["cache_write_tokens"] = usage.cache_write_tokens
            if usage.cache_write_1h_tokens:
                counts["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
                counts["cache_write_5m_tokens"] = usage.cache_write_tokens - usage.cache_write_1h_tokens
        if usage.reasoning_tokens:
            counts["output_reasoning_tokens"] = usage.reasoning_tokens
        # The request's time: prices change on given dates (and some by time of day).
        started = datetime.fromtimestamp(time.time() - call.duration_s, tz=timezone.utc)
        usage_in = self._usage(**counts)
        try:
            result = self._calc(usage_in, model, provider_id=provider_id, genai_request_timestamp=started)
        except LookupError:
            if provider not in _OPENAI_COMPATIBLE:
                return None
            # "openai" also names every OpenAI-compatible server (Mistral, DeepSeek, xAI...
            # behind /v1/chat/completions): let genai-prices find the model's own provider
            # by its name. Self-hosted models match no provider and stay unpriced.
            try:
                result = self._calc(usage_in, model, genai_request_timestamp=started)
            except LookupError:
                return None
        return float(result.total_price)


class Pricing:
    """What ``Metering`` holds for ``pricing=``: prices a call, reports unpriced models once."""

    def __init__(self, pricer: _Pricer, on_unpriced: Callable[[str], None]) -> None:
        self._pricer = pricer
        self._on_unpriced = on_unpriced
        self._unpriced: set[str] = set()
        self._lock = threading.Lock()

    def cost(self, call: CallRecord) -> float | None:
        usage = call.usage
        if usage is None:
            return None
        model = call.response_model or call.request_model
        if not model:
            self._unpriced_model("(no model)", call.provider)
            return None
        try:
            cost = self._pricer.price(usage, model, call.provider, call)
        except Exception as exc:  # a usage the price source cannot take: no cost, said once
            self._unpriced_model(model, call.provider, exc)
            return None
        if cost is None:
            self._unpriced_model(model, call.provider)
        return cost

    def _unpriced_model(self, model: str, provider: str | None, error: Exception | None = None) -> None:
        if model in self._unpriced:
            return
        with self._lock:
            if model in self._unpriced or len(self._unpriced) >= MAX_UNPRICED_MODELS:
                return
            self._unpriced.add(model)
        if error is not None:
            logger.warning(
                "llm-metrics: no price for model %r (provider %s): pricing failed with %s: %s; its calls add no cost",
                model,
                provider or "unknown",
                type(error).__name__,
                error,
            )
        else:
            logger.warning(
                "llm-metrics: no price for model %r (provider %s); its calls add no cost. "
                "Give it a Price in pricing= (a key that is the model or a prefix of it)",
                model,
                provider or "unknown",
            )
        self._on_unpriced(model)


#: ``LLM_METRICS_PRICING=genai-prices`` turns pricing on when ``pricing=`` is not given.
PRICING_ENV = "LLM_METRICS_PRICING"


def pricing_from_environment(pricing: PricingOption) -> PricingOption:
    """``pricing=`` if given, else ``$LLM_METRICS_PRICING`` (``genai-prices``, or empty)."""
    if pricing is not None:
        return pricing
    value = os.environ.get(PRICING_ENV, "").strip()
    if not value:
        return None
    if value != GENAI_PRICES:
        raise ValueError(
            f"{PRICING_ENV}={value!r} is not a price source; set it to 'genai-prices' or unset it "
            "(your own prices go in pricing= in code)"
        )
    return GENAI_PRICES


def build_pricing(pricing: PricingOption, on_unpriced: Callable[[str], None]) -> Pricing | None:
    """Check ``pricing=`` and build what prices calls (None: no pricing)."""
    if pricing is None:
        return None
    pricer: _Pricer
    if isinstance(pricing, str):
        if pricing != GENAI_PRICES:
            raise ValueError(
                f"pricing={pricing!r} is not a known price source; use pricing='genai-prices', "
                "a Price(...) or a mapping of model name to Price"
            )
        pricer = _GenaiPricer()
    elif isinstance(pricing, Price):
        pricer = _FlatPricer(pricing)
    elif isinstance(pricing, Mapping):
        for key, value in pricing.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"pricing= keys are model names (or prefixes of them), got {key!r}")
            if not isinstance(value, Price):
                raise TypeError(
                    f"pricing={{{key!r}: ...}} takes a Price(input=..., output=...) in USD per million tokens, got {value!r}"
                )
        if not pricing:
            raise ValueError("pricing= is an empty mapping; give at least one model's Price, or pricing=None")
        pricer = _TablePricer(pricing)
    else:
        raise TypeError(
            f"pricing= takes None, 'genai-prices', a Price or a mapping of model name to Price, got {pricing!r}"
        )
    return Pricing(pricer, on_unpriced)
