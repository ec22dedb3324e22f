"""Token usage: the normalised result, and how each provider's usage object maps to it.

Every provider is normalised to one meaning, so that sums across providers add up:

- ``prompt_tokens``: all input tokens processed, cached ones included (Anthropic and
  Bedrock report cache reads and writes apart from ``input_tokens``; we add them back);
- ``completion_tokens``: all output tokens, reasoning ("thinking") tokens included
  (Gemini reports ``thoughtsTokenCount`` apart from ``candidatesTokenCount``, xAI its
  ``reasoning_tokens`` apart from ``completion_tokens``);
- ``total_tokens``: the provider's total when it reports one, else prompt + completion;
- audio tokens (OpenAI's ``prompt_tokens_details.audio_tokens`` and
  ``completion_tokens_details.audio_tokens``, gpt-4o-audio and gpt-audio models) are parts
  of the prompt and completion tokens, as OpenAI counts them: they are counted there once,
  never added again, and not kept apart;
- ``cached_tokens`` (prompt tokens read from the provider's cache), ``cache_write_tokens``
  (prompt tokens written to it: Anthropic's and Bedrock's cache creation, which they bill
  above the input price; ``cache_write_1h_tokens`` the part of them written for an hour,
  billed higher still) and ``reasoning_tokens``: the subsets, 0 when not reported.

Streams repeat usage cumulatively (Gemini, vLLM's continuous usage stats, Anthropic's
``message_delta``), so objects are merged field by field, the last value winning; nothing
is ever summed across events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Largest token count believed for one response. Above it a value is treated as garbage
#: (a provider bug or a forged body), and the usage is dropped rather than exported.
MAX_TOKENS = 50_000_000


@dataclass(frozen=True)
class Usage:
    """Token counts of one response, normalised as described in the module docstring."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: True when the counts were estimated because the response carried no usage.
    estimated: bool = False
    #: Prompt tokens written to the provider's prompt cache (a subset of ``prompt_tokens``).
    cache_write_tokens: int = 0
    #: The part of ``cache_write_tokens`` cached for one hour (Anthropic's 1h TTL).
    cache_write_1h_tokens: int = 0


_new = object.__new__


def make_usage(
    prompt: int,
    completion: int,
    total: int,
    cached: int = 0,
    reasoning: int = 0,
    estimated: bool = False,
    cache_write: int = 0,
    cache_write_1h: int = 0,
) -> Usage:
    """``Usage(...)`` for the request path, in a third of the time.

    A frozen dataclass sets each field through ``object.__setattr__`` (about a microsecond
    for six); filling the instance dict directly makes the same, equally frozen object
    (a test checks that it sets every field of Usage, in order).
    """
    usage = _new(Usage)
    d = usage.__dict__
    d["prompt_tokens"] = prompt
    d["completion_tokens"] = completion
    d["total_tokens"] = total
    d["cached_tokens"] = cached
    d["reasoning_tokens"] = reasoning
    d["estimated"] = estimated
    d["cache_write_tokens"] = cache_write
    d["cache_write_1h_tokens"] = cache_write_1h
    return usage


def as_count(value: Any) -> int | None:
    """A token count as an ``int``, or None when ``value`` is not a sane count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        count = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        count = int(value)
    else:
        return None
    if count < 0 or count > MAX_TOKENS:
        return None
    return count


def _sum(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


# (prompt, completion, total, cached, reasoning, cache written, of which for 1h); None where
# the object does not say.
# Records are plain dicts (from json.loads or the scanner): isinstance(x, dict) is far
# cheaper than an ABC check on the hot path.
Counts = tuple[int | None, int | None, int | None, int | None, int | None, int | None, int | None]


class Invalid(Exception):
    """A usage object was found but holds values we refuse to count."""


def _count(obj: Any, key: str, sub: str | None = None) -> int | None:
    """The count at ``obj[key]`` (or ``obj[key][sub]``); raises :class:`Invalid` if absurd."""
    value = obj.get(key) if type(obj) is dict else None
    if sub is not None:
        value = value.get(sub) if type(value) is dict else None
    if value is None:
        return None
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value  # the usual case, without as_count's checks
    count = as_count(value)
    if count is None:
        raise Invalid(f"{key}{'.' + sub if sub else ''}={value!r}")
    return count


# -- one reader per usage shape ---------------------------------------------------------
# Each takes the usage object (the dict a provider puts its counts in) and returns its
# counts, or None when the object is not of its shape after all. Which shapes are tried
# where, in which order, and which provider each one names is the provider table's
# business (``providers/table.py``); these functions only know the field names.


def plain_counts(prompt: Any, completion: Any, total: Any, cached: Any, reasoning: Any) -> bool:
    """The five counts of a chat usage object are all ints every reader keeps as they are
    (no bool, float, null or absurd value): the one test of read_chat's plain path and of
    the whole-body chat path (:mod:`.whole`)."""
    # The bitwise or of ints is negative when one is, and at least the largest when none
    # is; past MAX_TOKENS plain counts merely take the judged way.
    return (
        type(prompt) is int
        and type(completion) is int
        and type(total) is int
        and type(cached) is int
        and type(reasoning) is int
        and 0 <= prompt | completion | total | cached | reasoning <= MAX_TOKENS
    )


def read_chat(usage: Mapping[str, Any]) -> Counts | None:
    """OpenAI chat / completions / embeddings, Azure OpenAI, Mistral, vLLM, DeepSeek..."""
    # The most common shape of all, every count a plain int (OpenAI's chunks and bodies
    # report the cached and reasoning details too): read with one dict get each and one
    # test of them all. Anything else (a count missing, null, a float, a bool, absurd;
    # DeepSeek's cache hits) is read field by field by _judged_chat, which decides.
    get = usage.get
    prompt = get("prompt_tokens")
    completion = get("completion_tokens")
    total = get("total_tokens")
    details = get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    details = get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if type(details) is dict else None
    if plain_counts(prompt, completion, total, cached, reasoning):
        if reasoning:  # most calls report none: no call to weigh it
            completion = with_outside_reasoning(prompt, completion, total, reasoning)
        return prompt, completion, total, cached, reasoning, None, None
    return _judged_chat(usage, prompt, completion, total, cached, reasoning)


def _judged_chat(usage: Mapping[str, Any], prompt: Any, completion: Any, total: Any, cached: Any, reasoning: Any) -> Counts:
    """:func:`read_chat` of a usage object whose values it has read but not all as plain
    counts: each is judged (the plain ints kept as they are, anything else by _count)."""
    if prompt is not None and not (type(prompt) is int and 0 <= prompt <= MAX_TOKENS):
        prompt = _count(usage, "prompt_tokens")
    if completion is not None and not (type(completion) is int and 0 <= completion <= MAX_TOKENS):
        completion = _count(usage, "completion_tokens")
    if total is not None and not (type(total) is int and 0 <= total <= MAX_TOKENS):
        total = _count(usage, "total_tokens")
    if cached is None:
        cached = _count(usage, "prompt_cache_hit_tokens")  # DeepSeek
    elif not (type(cached) is int and 0 <= cached <= MAX_TOKENS):
        cached = _count(usage, "prompt_tokens_details", "cached_tokens")
    if reasoning is not None and not (type(reasoning) is int and 0 <= reasoning <= MAX_TOKENS):
        reasoning = _count(usage, "completion_tokens_details", "reasoning_tokens")
    if completion is None and prompt is not None and total is not None:
        completion = 0  # embeddings
    if reasoning:
        completion = with_outside_reasoning(prompt, completion, total, reasoning)
    return prompt, completion, total, cached, reasoning, None, None


def with_outside_reasoning(prompt: int | None, completion: int | None, total: int | None, reasoning: int | None) -> int | None:
    """Completion with billed reasoning in it, for providers that report it outside.

    OpenAI counts reasoning inside ``completion_tokens``; xAI (Grok, directly or on Vertex
    AI) reports it beside them, its total being prompt + completion + reasoning. The total
    tells the two apart, so no provider list is needed.
    """
    if (
        reasoning
        and prompt is not None
        and completion is not None
        and total is not None
        and total == prompt + completion + reasoning
    ):
        return completion + reasoning
    return completion


def read_responses(usage: Mapping[str, Any]) -> Counts | None:
    """OpenAI Responses API: ``input_tokens`` already includes the cached ones.

    Told from Anthropic's ``input_tokens`` by its details objects or its total.
    """
    if not ("input_tokens_details" in usage or "output_tokens_details" in usage or "total_tokens" in usage):
        return None
    prompt = _count(usage, "input_tokens")
    completion = _count(usage, "output_tokens")
    cached = _count(usage, "input_tokens_details", "cached_tokens")
    reasoning = _count(usage, "output_tokens_details", "reasoning_tokens")
    total = _count(usage, "total_tokens")
    return prompt, with_outside_reasoning(prompt, completion, total, reasoning), total, cached, reasoning, None, None


def _prompt_beside_cache(
    usage: Mapping[str, Any], uncached_key: str, written_key: str, read_key: str
) -> tuple[int | None, int | None, int | None]:
    """``(prompt, read, written)`` for providers whose input count leaves out the cache
    (Anthropic, Bedrock Converse): the prompt is the three added, when the input is known."""
    uncached = _count(usage, uncached_key)
    written = _count(usage, written_key)
    read = _count(usage, read_key)
    return (_sum(uncached, written, read) if uncached is not None else None), read, written


def read_anthropic(usage: Mapping[str, Any]) -> Counts | None:
    """Anthropic Messages: ``input_tokens`` excludes cache writes and reads."""
    prompt, read, written = _prompt_beside_cache(
        usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
    )
    hour = _count(usage, "cache_creation", "ephemeral_1h_input_tokens")
    return prompt, _count(usage, "output_tokens"), None, read, None, written, hour


def read_converse(usage: Mapping[str, Any]) -> Counts | None:
    """AWS Bedrock Converse: ``inputTokens`` excludes cache reads and writes."""
    prompt, read, written = _prompt_beside_cache(usage, "inputTokens", "cacheWriteInputTokens", "cacheReadInputTokens")
    return prompt, _count(usage, "outputTokens"), _count(usage, "totalTokens"), read, None, written, None


def read_cohere(usage: Mapping[str, Any]) -> Counts | None:
    """Cohere v2: actual token counts in ``tokens``, billed ones in ``billed_units``."""
    tokens = usage.get("tokens")
    source = tokens if isinstance(tokens, dict) else usage.get("billed_units")
    if not isinstance(source, dict):
        return None
    prompt = _count(source, "input_tokens")
    completion = _count(source, "output_tokens")
    cached = _count(usage, "cached_tokens")
    return prompt, completion, None, cached, None, None, None


def read_gemini(meta: Mapping[str, Any]) -> Counts | None:
    """Google Gemini / Vertex AI ``usageMetadata``."""
    prompt = _count(meta, "promptTokenCount")
    tool_prompt = _count(meta, "toolUsePromptTokenCount")
    candidates = _count(meta, "candidatesTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    total = _count(meta, "totalTokenCount")
    cached = _count(meta, "cachedContentTokenCount")
    if prompt is not None and tool_prompt is not None:
        prompt += tool_prompt
    completion = _sum(candidates, thoughts)
    if completion is None and prompt is not None:
        completion = 0  # a chunk before any candidate text, or embeddings
    return prompt, completion, total, cached, thoughts, None, None


def read_invocation_metrics(metrics: Mapping[str, Any]) -> Counts | None:
    """AWS Bedrock ``amazon-bedrock-invocationMetrics`` (last chunk of an InvokeModel stream).

    ``inputTokenCount`` excludes cache reads and writes, as Converse's ``inputTokens`` does.
    """
    uncached = _count(metrics, "inputTokenCount")
    read = _count(metrics, "cacheReadInputTokenCount")
    written = _count(metrics, "cacheWriteInputTokenCount")
    prompt = _sum(uncached, written, read) if uncached is not None else None
    return prompt, _count(metrics, "outputTokenCount"), None, read, None, written, None


def read_titan(obj: Mapping[str, Any]) -> Counts | None:
    """Amazon Titan text on Bedrock: top-level counts; ``results[0].tokenCount`` when not streamed."""
    prompt = _count(obj, "inputTextTokenCount")
    completion = _count(obj, "totalOutputTextTokenCount")
    if completion is None:
        results = obj.get("results")
        # A list from json.loads; from the scanner, a sparse dict keyed by index.
        first = (results[0] if results else None) if type(results) is list else results.get(0) if type(results) is dict else None
        if type(first) is dict:
            completion = _count(first, "tokenCount")
    return prompt, completion, None, None, None, None, None


def read_llama(obj: Mapping[str, Any]) -> Counts | None:
    """Meta Llama on Bedrock: ``prompt_token_count`` and ``generation_token_count`` at the top."""
    return _count(obj, "prompt_token_count"), _count(obj, "generation_token_count"), None, None, None, None, None


def read_ollama(obj: Mapping[str, Any]) -> Counts | None:
    """Ollama: counts only on the final ``"done": true`` object, at its top level."""
    prompt = _count(obj, "prompt_eval_count")
    completion = _count(obj, "eval_count")
    return prompt, completion if completion is not None else 0, None, None, None, None, None


def with_hidden_output(usage: Usage) -> Usage:
    """``usage`` with what its total holds beyond prompt + completion counted as output.

    For providers whose total counts billed output that their completion count leaves
    out, and that report no reasoning field for it (Gemini's OpenAI compatibility
    endpoint: a thinking model's thoughts). The difference is reasoning, billed as output:
    completion and reasoning both grow by it, so that prompt + completion = total again.
    """
    hidden = usage.total_tokens - usage.prompt_tokens - usage.completion_tokens
    if hidden <= 0 or usage.estimated:
        return usage
    return make_usage(
        usage.prompt_tokens,
        usage.completion_tokens + hidden,
        usage.total_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens + hidden,
        False,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
    )


class UsageAccumulator:
    """Merges the usage seen in a response's objects: per field, the last value wins.

    Kept as the merged counts tuple itself: most responses report usage once (a body, a
    stream's last chunk), and their first counts are the merge as they are, so building
    the accumulator, taking them and handing them to :func:`usage_of` costs a store each,
    not a store per field and a tuple rebuilt at the end.
    """

    __slots__ = ("counts", "seen")

    def __init__(self) -> None:
        #: The merged counts; None before any object with a prompt, completion or total.
        self.counts: Counts | None = None
        self.seen = False

    def update(self, counts: Counts) -> None:
        prompt, completion, total, cached, reasoning, written, written_1h = counts
        if prompt is None and completion is None and total is None:
            return
        last = self.counts
        self.seen = True
        if last is None:
            self.counts = counts  # a tuple: kept as it is
            return
        # A total belongs to the object that reported it; a later object that moves the
        # counts without a total makes it stale.
        self.counts = (
            last[0] if prompt is None else prompt,
            last[1] if completion is None else completion,
            total,
            last[3] if cached is None else cached,
            last[4] if reasoning is None else reasoning,
            last[5] if written is None else written,
            last[6] if written_1h is None else written_1h,
        )

    def result(self) -> Usage | None:
        counts = self.counts
        return None if counts is None else usage_of(counts)


def usage_of(counts: Counts) -> Usage | None:
    """The normalised :class:`Usage` of merged counts (what :meth:`UsageAccumulator.result`
    returns); also the usage of one object's counts, when its counts are all there is."""
    prompt, completion, total, cached, reasoning, written, written_1h = counts
    if prompt is None and completion is None:
        return None
    # Conditional expressions, not min(): the builtin's call costs more than the whole
    # comparison, and this runs once per metered call.
    prompt = prompt or 0
    completion = completion or 0
    cached = cached or 0
    if cached > prompt:
        cached = prompt
    reasoning = reasoning or 0
    if reasoning > completion:
        reasoning = completion
    whole = prompt + completion
    total = total if total is not None and total >= whole else whole
    if written is None and written_1h is None:
        # No cache writes reported (every provider but Anthropic and Bedrock): their
        # fields keep make_usage's defaults, 0, which is what the clamps below give.
        return make_usage(prompt, completion, total, cached, reasoning)
    written = written or 0
    if written > prompt - cached:
        written = prompt - cached
    written_1h = written_1h or 0
    if written_1h > written:
        written_1h = written
    return make_usage(prompt, completion, total, cached, reasoning, False, written, written_1h)
