"""Real provider wire formats: response bodies as they travel, with the numbers a meter must read.

Every body under ``bodies/`` was taken from a provider's own API reference or from real recorded
traffic (VCR cassettes, SDK test fixtures recorded against the live API, curl and packet
captures); ``source`` names where. Where a recording was adapted (content shortened, middle
stream chunks dropped, a parsed cassette body serialised back to JSON in the provider's field
order) the case's ``note`` says so; every structural detail was kept: field names, nesting,
SSE ``event:`` lines, comment lines, ``data: [DONE]``, CRLF framing, Anthropic's whitespace
padding before a closing brace, Azure's content-filter chunks.

Expected numbers follow the package's normalisation:

* ``prompt_tokens`` counts every input token, cached ones included (Anthropic: input +
  cache creation + cache read; Bedrock: input + cache read + cache write; Gemini:
  promptTokenCount + toolUsePromptTokenCount).
* ``completion_tokens`` counts every output token, reasoning included (Gemini: candidates +
  thoughts); 0 for embeddings.
* ``cached_tokens``: OpenAI ``prompt_tokens_details.cached_tokens``, Responses
  ``input_tokens_details.cached_tokens``, Anthropic ``cache_read_input_tokens``, Bedrock
  ``cacheReadInputTokens``, Gemini ``cachedContentTokenCount``, Cohere ``usage.cached_tokens``.
* ``cache_write_tokens``: Anthropic ``cache_creation_input_tokens``, Bedrock
  ``cacheWriteInputTokens`` (billed above the input price, so pricing needs them apart);
  ``cache_write_1h_tokens``: Anthropic ``cache_creation.ephemeral_1h_input_tokens``.
* ``total_tokens`` is the provider's total when it reports one at least prompt + completion,
  else prompt + completion.
* Streams whose usage is cumulative (Gemini, vLLM continuous usage stats, Anthropic
  ``message_delta``) take the last value; nothing is summed.
* A stream with no usage at all is ``estimated``; its numbers are left at 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BODIES = Path(__file__).parent / "bodies"


@dataclass(frozen=True)
class WireCase:
    id: str                      # e.g. "openai-chat-stream-include-usage"
    provider: str                # expected provider name
    operation: str               # expected operation name
    method: str                  # "POST"
    path: str                    # request path as a client would send it, e.g. "/v1/chat/completions"
    request_body: bytes          # the JSON request body the client sent (b"" if none)
    content_type: str            # the response Content-Type exactly as the provider sends it
    body_file: str               # file name under bodies/
    prompt_tokens: int           # expected, normalised
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    model: str | None = None     # expected response model (from the body; else from path; else request)
    estimated: bool = False      # True when the body carries no usage at all
    source: str = ""             # where the format came from (URL or repo/path)
    request_headers: tuple[tuple[str, str], ...] = ()
    query: str = ""              # query string without "?", e.g. "api-version=2024-10-21" or "alt=sse"
    response_headers: tuple[tuple[str, str], ...] = ()  # besides Content-Type, as recorded
    note: str = field(default="", compare=False)  # how the recording was adapted, if it was

    @property
    def body(self) -> bytes:
        return (BODIES / self.body_file).read_bytes()


def _req(obj: object) -> bytes:
    """A request body as a client SDK sends it (compact JSON)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_SSE = "text/event-stream"
_SSE_UTF8 = "text/event-stream; charset=utf-8"
_JSON = "application/json"
_GOOGLE_JSON = "application/json; charset=UTF-8"

_ANTHROPIC_HEADERS = (("anthropic-version", "2023-06-01"),)
_EVENTSTREAM = "application/vnd.amazon.eventstream"
_OTEL_BOTOCORE = "open-telemetry/opentelemetry-python-contrib instrumentation/opentelemetry-instrumentation-botocore/tests/cassettes/"
_BEDROCK_STREAM_NOTE = "binary body exactly as recorded (event-stream frames, CRCs and Bedrock's 'p' padding field untouched); path is the decoded form"
_BEDROCK_JSON_NOTE = "the cassette pretty-prints JSON bodies (its PrettyPrintJSONBody serializer); written back compact; path is the decoded form"


def _bedrock_tokens(prompt: int, completion: int) -> tuple[tuple[str, str], ...]:
    """The token-count headers every recorded Bedrock InvokeModel response carries."""
    return (("X-Amzn-Bedrock-Input-Token-Count", str(prompt)), ("X-Amzn-Bedrock-Output-Token-Count", str(completion)))


def _no_tokens(**fields: Any) -> WireCase:
    """A call that must be recorded with no tokens at all (no usage reported, none billed)."""
    return WireCase(prompt_tokens=0, completion_tokens=0, total_tokens=0, **fields)


def _not_llm(id: str, path: str, content_type: str, body_file: str, note: str = "") -> WireCase:
    """A GET of an endpoint that is no LLM API: no provider, no operation, no tokens."""
    return _no_tokens(
        id=id, provider="", operation="", method="GET", path=path, request_body=b"", content_type=content_type,
        body_file=body_file, note=note,
    )


def _botocore(
    id: str, api: str, model_id: str, request: object, prompt: int, completion: int, *,
    cassette: str, note: str, model: str | None = None,
) -> WireCase:
    """A Bedrock call recorded in OpenTelemetry's botocore cassettes (``cassette``), at
    ``/model/{model_id}/{api}``: a stream (``converse-stream``, ``invoke-with-response-stream``)
    is its binary event stream as recorded, an ``invoke`` its JSON body with the token-count
    headers; ``model`` is the body's when it names another than the path's."""
    streamed = api != "invoke"
    return WireCase(
        id=id, provider="aws.bedrock", operation=api.split("-")[0], method="POST", path=f"/model/{model_id}/{api}",
        request_body=_req(request), content_type=_EVENTSTREAM if streamed else _JSON,
        body_file=id + (".eventstream" if streamed else ".json"),
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, model=model or model_id,
        response_headers=() if streamed else _bedrock_tokens(prompt, completion),
        source=_OTEL_BOTOCORE + cassette, note=(_BEDROCK_STREAM_NOTE if streamed else _BEDROCK_JSON_NOTE) + "; " + note,
    )


_SAY_TEST = [{"role": "user", "content": [{"text": "Say this is a test"}]}]

CASES: list[WireCase] = [
    # ------------------------------------------------------------------ OpenAI
    WireCase(
        id="openai-chat-json",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "Invent a new holiday and describe its traditions."}]}),
        content_type=_JSON, body_file="openai-chat-json.json",
        prompt_tokens=16, completion_tokens=363, total_tokens=379,
        model="gpt-4.1-nano-2025-04-14",
        source="vercel/ai packages/openai/src/chat/__fixtures__/openai-text.json",
        note="assistant content shortened",
    ),
    WireCase(
        id="openai-chat-json-o3-mini-reasoning",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"messages": [{"role": "user", "content": "Considering the way to cross the street, analogously, how do I cross the river?"}], "model": "o3-mini", "reasoning_effort": "high", "stream": False}),
        content_type=_JSON, body_file="openai-chat-json-o3-mini-reasoning.json",
        prompt_tokens=577, completion_tokens=2320, total_tokens=2897, reasoning_tokens=1792,
        model="o3-mini-2025-01-31",
        source="pydantic/pydantic-ai tests/models/cassettes/test_openai/test_openai_model_thinking_part.yaml (2nd interaction)",
        note="cassette stores the parsed body; re-serialised in OpenAI's field order; content shortened",
    ),
    WireCase(
        id="xai-chat-json-reasoning-outside-completion",
        provider="openai", operation="chat.completions", method="POST",
        path="/v1/projects/test-project/locations/global/endpoints/openapi/chat/completions",
        request_body=_req({"model": "xai/grok-4.1-fast-reasoning", "messages": [{"role": "user", "content": "Who are you?"}]}),
        content_type=_JSON, body_file="xai-chat-json-reasoning-outside-completion.json",
        prompt_tokens=663, completion_tokens=50 + 124, total_tokens=837, cached_tokens=654, reasoning_tokens=124,
        model="xai/grok-4.1-fast-reasoning",
        source="https://docs.cloud.google.com/vertex-ai/generative-ai/docs/partner-models/grok/capabilities/reasoning (example response)",
        note="Grok reports reasoning_tokens beside completion_tokens (total = 663 + 50 + 124): completion must include the billed "
        "reasoning. Written compact in the documented field order. The path is Vertex AI's OpenAI-compatible endpoint, "
        "routed by its /chat/completions suffix, so the provider is reported as openai (force it with provider=)",
    ),
    WireCase(
        id="openai-chat-stream-include-usage",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"messages": [{"role": "user", "content": "What is the capital of the UK? Use the tool, then answer."}], "model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}),
        content_type=_SSE_UTF8, body_file="openai-chat-stream-include-usage.sse",
        prompt_tokens=78, completion_tokens=9, total_tokens=87,
        model="gpt-4o-mini-2024-07-18",
        source="pydantic/pydantic-ai tests/models/cassettes/test_openai/test_run_stream_sync_streams_real_model.yaml (2nd interaction)",
        note="verbatim; request body shortened (tool history dropped)",
    ),
    WireCase(
        id="openai-chat-stream-tool-call",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"messages": [{"role": "user", "content": "What is the capital of the UK? Use the tool, then answer."}], "model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}, "tool_choice": "auto", "tools": [{"type": "function", "function": {"name": "get_capital", "description": "", "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"], "additionalProperties": False}, "strict": True}}]}),
        content_type=_SSE_UTF8, body_file="openai-chat-stream-tool-call.sse",
        prompt_tokens=53, completion_tokens=15, total_tokens=68,
        model="gpt-4o-mini-2024-07-18",
        source="pydantic/pydantic-ai tests/models/cassettes/test_openai/test_run_stream_sync_streams_real_model.yaml (1st interaction)",
        note="verbatim",
    ),
    WireCase(
        id="openai-chat-stream-no-usage",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hello"}], "stream": True}),
        content_type=_SSE, body_file="openai-chat-stream-no-usage.sse",
        prompt_tokens=0, completion_tokens=0, total_tokens=0, estimated=True,
        model="gpt-3.5-turbo-0613",
        source="recorded gpt-3.5-turbo-0613 stream (chatcmpl-8t1WLFfcSfmK0sfBcFbj8VEhOqNYd, Feb 2024) kept as a mock fixture in a public testcontainers suite; content type as in simonw/llm's 2024 capture (no charset)",
        note="verbatim",
    ),
    WireCase(
        id="openai-completions-json",
        provider="openai", operation="completions", method="POST", path="/v1/completions",
        request_body=_req({"model": "gpt-3.5-turbo-instruct", "prompt": "Invent a new holiday and describe its traditions.", "max_tokens": 16}),
        content_type=_JSON, body_file="openai-completions-json.json",
        prompt_tokens=14, completion_tokens=16, total_tokens=30,
        model="gpt-3.5-turbo-instruct:20230824-v2",
        source="vercel/ai packages/openai/src/completion/__fixtures__/openai-completion-text.json",
        note="verbatim",
    ),
    WireCase(
        id="openai-embeddings-json",
        provider="openai", operation="embeddings", method="POST", path="/v1/embeddings",
        request_body=_req({"model": "text-embedding-3-small", "input": ["sunny day at the beach", "rainy day in the city"], "encoding_format": "float"}),
        content_type=_JSON, body_file="openai-embeddings-json.json",
        prompt_tokens=12, completion_tokens=0, total_tokens=12,
        model="text-embedding-3-small",
        source="vercel/ai packages/openai/src/embedding/__fixtures__/openai-embedding.json",
        note="verbatim (the fixture keeps 5 dimensions per vector)",
    ),
    WireCase(
        id="openai-responses-json",
        provider="openai", operation="responses", method="POST", path="/v1/responses",
        request_body=_req({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Reply with OK."}]}]}),
        content_type=_JSON, body_file="openai-responses-json.json",
        prompt_tokens=12, completion_tokens=2, total_tokens=14,
        model="gpt-4o-mini-2024-07-18",
        source="vercel/ai packages/openai/src/responses/__fixtures__/issue-20047-openai-responses.json",
        note="verbatim; note the nested tool_usage.image_gen input/output/total_tokens before the real usage",
    ),
    WireCase(
        id="openai-responses-json-o3-mini-reasoning",
        provider="openai", operation="responses", method="POST", path="/v1/responses",
        request_body=_req({"include": ["reasoning.encrypted_content"], "input": [{"content": "How do I cross the street?", "role": "user"}], "model": "o3-mini", "reasoning": {"effort": "high", "summary": "detailed"}, "stream": False}),
        content_type=_JSON, body_file="openai-responses-json-o3-mini-reasoning.json",
        prompt_tokens=13, completion_tokens=1915, total_tokens=1928, reasoning_tokens=1600,
        model="o3-mini-2025-01-31",
        source="pydantic/pydantic-ai tests/models/cassettes/test_openai/test_openai_model_thinking_part.yaml (1st interaction)",
        note="cassette stores the parsed body; re-serialised in the Responses API field order; summary and text shortened",
    ),
    WireCase(
        id="openai-responses-stream",
        provider="openai", operation="responses", method="POST", path="/v1/responses",
        request_body=_req({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Reply with OK."}]}], "stream": True}),
        content_type=_SSE_UTF8, body_file="openai-responses-stream.sse",
        prompt_tokens=12, completion_tokens=2, total_tokens=14,
        model="gpt-4o-mini-2024-07-18",
        source="vercel/ai packages/openai/src/responses/__fixtures__/issue-20047-openai-responses.chunks.txt",
        note="payloads verbatim; framed as the Responses API sends them (event: <type> + data:, no [DONE])",
    ),
    WireCase(
        id="openrouter-chat-stream-comments",
        provider="openai", operation="chat.completions", method="POST", path="/api/v1/chat/completions",
        request_body=_req({"model": "anthropic/claude-haiku-4-5", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 50, "stream": True}),
        content_type=_SSE, body_file="openrouter-chat-stream-comments.sse",
        prompt_tokens=8, completion_tokens=24, total_tokens=32,
        model="anthropic/claude-4.5-haiku-20251001",
        source="raw OpenRouter stream capture in a public repo probe report (PROBE-VAL-01, gen-1778084973-hMXUx2DWmurqwHonRCcn); comment lines per OpenRouter's streaming docs",
        note="verbatim (': OPENROUTER PROCESSING' comments, usage on the last chunk that still has choices)",
    ),
    # ------------------------------------------------------------------ Azure OpenAI
    WireCase(
        id="azure-chat-json-cached-tool-call",
        provider="azure.ai.openai", operation="chat.completions", method="POST",
        path="/openai/deployments/gpt-4o/chat/completions", query="api-version=2024-10-21",
        request_body=_req({"messages": [{"role": "user", "content": "List the repositories of chaozai0304"}], "tools": [{"type": "function", "function": {"name": "search_repositories", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]}),
        content_type=_JSON, body_file="azure-chat-json-cached-tool-call.json",
        prompt_tokens=2012, completion_tokens=23, total_tokens=2035, cached_tokens=1920,
        model="gpt-4o-2024-11-20",
        source="recorded Azure OpenAI gpt-4o-2024-11-20 response (chatcmpl-BMTWfxTMiqoJFie4RuxDfx0c7eXOw) in a public MCP demo README",
        note="the README pretty-printed it; written compact with Azure's (sorted) key order",
    ),
    WireCase(
        id="azure-chat-stream-content-filter",
        provider="azure.ai.openai", operation="chat.completions", method="POST",
        path="/openai/deployments/model-router/chat/completions", query="api-version=2025-01-01-preview",
        request_body=_req({"messages": [{"role": "user", "content": "What is the capital of Denmark?"}], "stream": True, "stream_options": {"include_usage": True}}),
        content_type=_SSE_UTF8, body_file="azure-chat-stream.sse",
        prompt_tokens=15, completion_tokens=78, total_tokens=93, reasoning_tokens=64,
        model="gpt-5-nano-2025-08-07",
        source="vercel/ai packages/openai/src/chat/__fixtures__/azure-model-router.1.chunks.txt",
        note="payloads verbatim (leading prompt_filter_results chunk with empty choices and model \"\"), framed data: + [DONE]",
    ),
    # ------------------------------------------------------------------ Anthropic
    WireCase(
        id="anthropic-messages-json-cache",
        provider="anthropic", operation="messages", method="POST", path="/v1/messages",
        request_body=_req({"max_tokens": 4096, "messages": [{"role": "user", "content": [{"type": "text", "text": "Can you summarize that in one sentence?"}]}], "model": "claude-sonnet-4-5", "system": "You are a helpful assistant.", "cache_control": {"type": "ephemeral", "ttl": "5m"}}),
        content_type=_JSON, body_file="anthropic-messages-json-cache.json",
        prompt_tokens=3 + 418 + 1111, completion_tokens=33, total_tokens=3 + 418 + 1111 + 33, cached_tokens=1111, cache_write_tokens=418,
        model="claude-sonnet-4-5-20250929",
        source="pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_cache_real_api.yaml (2nd interaction)",
        note="cassette stores the parsed body; written compact in Anthropic's field order",
        request_headers=_ANTHROPIC_HEADERS,
    ),
    WireCase(
        id="anthropic-messages-stream",
        provider="anthropic", operation="messages", method="POST", path="/v1/messages",
        request_body=_req({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, how are you?"}], "stream": True}),
        content_type=_SSE_UTF8, body_file="anthropic-messages-stream.sse",
        prompt_tokens=12, completion_tokens=30, total_tokens=42,
        model="claude-sonnet-4-5-20250929",
        source="vercel/ai packages/anthropic/src/__fixtures__/anthropic-text.chunks.txt",
        note="payloads verbatim, framed event:/data:; the ping payload written as Anthropic sends it ({\"type\": \"ping\"})",
        request_headers=_ANTHROPIC_HEADERS,
    ),
    WireCase(
        id="anthropic-messages-stream-cache",
        provider="anthropic", operation="messages", method="POST", path="/v1/messages",
        request_body=_req({"model": "claude-opus-4-7", "max_tokens": 256, "system": [{"type": "text", "text": "Summarise the service notes.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}], "messages": [{"role": "user", "content": "Summarise the notes."}], "stream": True}),
        content_type=_SSE_UTF8, body_file="anthropic-messages-stream-cache.sse",
        prompt_tokens=5 + 9165 + 6025, completion_tokens=15, total_tokens=5 + 9165 + 6025 + 15, cached_tokens=6025, cache_write_tokens=9165, cache_write_1h_tokens=9165,
        model="claude-opus-4-7",
        source="real probe stream of claude-opus-4-7 (msg_01Jh7SDewyGoAtTkU72DkSVA) kept in a public Go test (TestExtractUsageFromSSEHandlesRealProbeStreamShape)",
        note="verbatim as kept by that test (no ping); message_start has Anthropic's padding before the closing brace; message_delta usage repeats input/cache and nests an 'iterations' list",
        request_headers=_ANTHROPIC_HEADERS,
    ),
    WireCase(
        id="anthropic-messages-stream-thinking",
        provider="anthropic", operation="messages", method="POST", path="/v1/messages",
        query="beta=true",
        request_body=_req({"max_tokens": 4096, "messages": [{"content": [{"text": "How do I cross the street?", "type": "text"}], "role": "user"}], "model": "claude-sonnet-4-0", "stream": True, "thinking": {"budget_tokens": 1024, "type": "enabled"}}),
        content_type=_SSE_UTF8, body_file="anthropic-messages-stream-thinking.sse",
        prompt_tokens=43, completion_tokens=277, total_tokens=320,
        model="claude-sonnet-4-20250514",
        source="pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_thinking_part_stream.yaml",
        note="raw body from the cassette; most thinking/text deltas dropped; whitespace padding of each kept event preserved",
        request_headers=_ANTHROPIC_HEADERS,
    ),
    # ------------------------------------------------------------------ Google Gemini API
    WireCase(
        id="gemini-generate-json-thinking",
        provider="gcp.gemini", operation="generateContent", method="POST",
        path="/v1beta/models/gemini-3-pro-preview:generateContent",
        request_body=_req({"contents": [{"role": "user", "parts": [{"text": "How many \"r\"s are in strawberry?"}]}]}),
        content_type=_GOOGLE_JSON, body_file="gemini-generate-json-thinking.json",
        prompt_tokens=9, completion_tokens=29 + 282, total_tokens=320, reasoning_tokens=282,
        model="gemini-3-pro-preview",
        source="vercel/ai packages/google/src/__fixtures__/google-reasoning.json",
        note="verbatim (the fixture already shortened thoughtSignature)",
    ),
    WireCase(
        id="gemini-stream-sse-crlf",
        provider="gcp.gemini", operation="streamGenerateContent", method="POST",
        path="/v1beta/models/gemini-2.5-flash:streamGenerateContent", query="alt=sse",
        request_body=_req({"contents": [{"parts": [{"text": "Say hi in five languages"}]}]}),
        content_type="text/event-stream", body_file="gemini-stream-sse-crlf.sse",
        prompt_tokens=5, completion_tokens=44 + 186, total_tokens=235, reasoning_tokens=186,
        model="models/gemini-2.5-flash-preview-05-20",
        source="https://github.com/simonw/llm-gemini/issues/97 (curl capture); CRLF framing per google-gemini/cookbook quickstarts/rest/Streaming_REST.ipynb output",
        note="payloads verbatim; each event ends \\r\\n\\r\\n as the Gemini API sends it; no [DONE]",
    ),
    WireCase(
        id="gemini-stream-sse-function-call",
        provider="gcp.gemini", operation="streamGenerateContent", method="POST",
        path="/v1beta/models/gemini-2.5-flash:streamGenerateContent", query="alt=sse",
        request_body=_req({"contents": [{"role": "user", "parts": [{"text": "What's the weather in Tokyo?"}]}], "tools": [{"functionDeclarations": [{"name": "getWeather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]}]}),
        content_type="text/event-stream", body_file="gemini-stream-sse-function-call.sse",
        prompt_tokens=83, completion_tokens=14 + 104, total_tokens=201, reasoning_tokens=104,
        model="gemini-2.5-flash",
        source="junjihashimoto/louter test-data/gemini/streaming_function_calling/response_0.json",
        note="payload verbatim; framed with \\r\\n\\r\\n like the Gemini API",
    ),
    WireCase(
        id="gemini-stream-json-array",
        provider="gcp.gemini", operation="streamGenerateContent", method="POST",
        path="/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        request_body=_req({"contents": [{"parts": [{"text": "Explain how AI works in a few words"}]}]}),
        content_type=_GOOGLE_JSON, body_file="gemini-stream-json-array.json",
        prompt_tokens=8, completion_tokens=12, total_tokens=20,
        model="gemini-2.0-flash",
        source="curl capture of streamGenerateContent without alt=sse in a public repo's notes (responseId md2UaLXRCaKTmNAPrsSpgAo)",
        note="verbatim: a JSON array whose elements are separated by '\\n,\\n'",
    ),
    # ------------------------------------------------------------------ Vertex AI
    WireCase(
        id="vertex-generate-json",
        provider="gcp.vertex_ai", operation="generateContent", method="POST",
        path="/v1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
        request_body=_req({"contents": [{"role": "user", "parts": [{"text": "What is the capital of France"}]}], "generationConfig": {"responseModalities": ["TEXT"], "temperature": 0.2, "maxOutputTokens": 1024, "topP": 0.8}}),
        content_type=_GOOGLE_JSON, body_file="vertex-generate-json.json",
        prompt_tokens=7, completion_tokens=158 + 712, total_tokens=877, reasoning_tokens=712,
        model="gemini-2.5-flash",
        source="curl output in a public Vertex AI Model Armor floor-setting example README (responseId lHuaaKrAM63zgLUPu77m6Ao)",
        note="verbatim",
    ),
    WireCase(
        id="vertex-stream-json-array",
        provider="gcp.vertex_ai", operation="streamGenerateContent", method="POST",
        path="/v1/projects/my-project/locations/global/publishers/google/models/gemini-2.5-flash-lite:streamGenerateContent",
        request_body=_req({"contents": [{"role": "user", "parts": [{"text": "Explain how AI works in a few words"}]}]}),
        content_type=_GOOGLE_JSON, body_file="vertex-stream-json-array.json",
        prompt_tokens=8, completion_tokens=11, total_tokens=19,
        model="gemini-2.5-flash-lite",
        source="curl capture of Vertex AI streamGenerateContent in a public repo's notes (responseId -r-eadKbBvyqmecP9-mOMA)",
        note="body verbatim (first element's usageMetadata holds only trafficType); the capture used the express-mode path /v1/publishers/google/models/..., written here with a project path",
    ),
    # ------------------------------------------------------------------ OpenAI-compatible servers
    WireCase(
        id="mistral-chat-json",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"messages": [{"content": [{"text": "Correct only the math, respond with no explanation, no formatting.", "type": "text"}, {"text": "The result of 21+21=99", "type": "text"}], "role": "user"}], "model": "mistral-small-latest", "n": 1, "stream": False, "top_p": 1.0}),
        content_type=_JSON, body_file="mistral-chat-json.json",
        prompt_tokens=28, completion_tokens=13, total_tokens=41,
        model="mistral-small-latest",
        source="pydantic/pydantic-ai tests/models/cassettes/test_mistral/test_mistral_chat_with_prediction.yaml",
        note="cassette stores the parsed body; written compact in Mistral's field order",
    ),
    WireCase(
        id="mistral-chat-stream-usage-last-chunk",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"messages": [{"content": "How do I cross the street?", "role": "user"}], "model": "magistral-medium-latest", "stream": True}),
        content_type=_SSE_UTF8, body_file="mistral-chat-stream.sse",
        prompt_tokens=10, completion_tokens=275, total_tokens=285,
        model="magistral-medium-latest",
        source="pydantic/pydantic-ai tests/models/cassettes/test_mistral/test_mistral_model_thinking_part_iter.yaml",
        note="raw body; most thinking/text chunks dropped; usage rides on the finish_reason chunk (no separate usage chunk); thinking deltas are content arrays",
    ),
    WireCase(
        id="vllm-chat-stream-continuous-usage",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"model": "meta-llama/Meta-Llama-3.1-70B-Instruct", "messages": [{"role": "user", "content": "say hello"}], "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}),
        content_type=_SSE_UTF8, body_file="vllm-chat-stream-continuous-usage.sse",
        prompt_tokens=46, completion_tokens=26, total_tokens=72,
        model="meta-llama/Meta-Llama-3.1-70B-Instruct",
        source="discourse/discourse-ai spec for the vLLM endpoint ('can properly include usage in streaming mode'), a recorded vLLM payload",
        note="eleven middle chunks dropped (cumulative usage jumps 10 -> 22); every chunk carries cumulative usage, then a usage-only chunk",
    ),
    # ------------------------------------------------------------------ Ollama
    WireCase(
        id="ollama-chat-ndjson-stream",
        provider="ollama", operation="chat", method="POST", path="/api/chat",
        request_body=_req({"model": "gemma:2b", "messages": [{"role": "user", "content": "10 * 10"}]}),
        content_type="application/x-ndjson", body_file="ollama-chat-stream.ndjson",
        prompt_tokens=33, completion_tokens=24, total_tokens=57,
        model="gemma:2b",
        source="DataTalksClub/llm-zoomcamp cohorts/2024 02-open-source homework (curl output of /api/chat)",
        note="verbatim",
    ),
    WireCase(
        id="ollama-generate-json",
        provider="ollama", operation="generate", method="POST", path="/api/generate",
        request_body=_req({"model": "llama3.2", "prompt": "helo", "stream": False}),
        content_type="application/json; charset=utf-8", body_file="ollama-generate-json.json",
        prompt_tokens=81, completion_tokens=23, total_tokens=104,
        model="llama3.2",
        source="terminal log of a C++ client calling Ollama /api/generate with stream false, in a public repo README; field order per ollama/ollama docs/api.md",
        note="verbatim",
    ),
    # ------------------------------------------------------------------ Cohere
    WireCase(
        id="cohere-chat-json",
        provider="cohere", operation="chat", method="POST", path="/v2/chat",
        request_body=_req({"messages": [{"content": "hello", "role": "user"}], "model": "command-r7b-12-2024", "stream": False}),
        content_type=_JSON, body_file="cohere-chat-json.json",
        prompt_tokens=496, completion_tokens=11, total_tokens=507,
        model="command-r7b-12-2024",
        source="pydantic/pydantic-ai tests/models/cassettes/test_cohere/test_request_simple_success_with_vcr.yaml",
        note="cassette stores the parsed body; written compact in Cohere's field order; the body names no model (expected model is the request's)",
    ),
    WireCase(
        id="cohere-chat-stream",
        provider="cohere", operation="chat", method="POST", path="/v2/chat",
        request_body=_req({"model": "command-a-03-2025", "messages": [{"role": "user", "content": "What is the capital of France?"}], "stream": True}),
        content_type=_SSE, body_file="cohere-chat-stream.sse",
        prompt_tokens=507, completion_tokens=10, total_tokens=517, cached_tokens=448,
        model="command-a-03-2025",
        source="vercel/ai packages/cohere/src/__fixtures__/cohere-text.chunks.txt",
        note="payloads verbatim, framed event:/data: with a closing data: [DONE]; usage in message-end delta.usage (tokens, billed_units and cached_tokens, a part of tokens.input_tokens)",
    ),
    # ------------------------------------------------------------------ AWS Bedrock
    WireCase(
        id="bedrock-converse-json-cache",
        provider="aws.bedrock", operation="converse", method="POST",
        path="/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse",
        request_body=_req({"messages": [{"role": "user", "content": [{"text": "ONLY SINGLE NUMBER IN RESPONSE\n"}, {"cachePoint": {"type": "default"}}, {"text": "Response only number What is 2 + 3"}]}], "system": [{"text": "YOU MUST RESPONSE ONLY WITH SINGLE NUMBER\n"}, {"cachePoint": {"type": "default"}}], "inferenceConfig": {}}),
        content_type=_JSON, body_file="bedrock-converse-json-cache.json",
        prompt_tokens=13 + 1504 + 0, completion_tokens=5, total_tokens=1522, cached_tokens=1504,
        model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        source="pydantic/pydantic-ai tests/models/cassettes/test_bedrock/test_bedrock_cache_usage_includes_cache_tokens.yaml",
        note="cassette stores the parsed body; written compact; path is the decoded form of .../v1%3A0/converse; request prompt shortened",
    ),
    # ------------------------------------------------------------------ AWS Bedrock: event streams and InvokeModel
    _botocore(
        "bedrock-converse-stream-titan", "converse-stream", "amazon.titan-text-lite-v1",
        {"messages": _SAY_TEST, "inferenceConfig": {"maxTokens": 10, "temperature": 0.8, "topP": 1, "stopSequences": ["|"]}},
        8, 10, cassette="test_converse_stream_with_content.yaml",
        note="usage in the last (metadata) event",
    ),
    _botocore(
        "bedrock-invoke-stream-anthropic", "invoke-with-response-stream", "anthropic.claude-v2",
        {"messages": [{"role": "user", "content": [{"text": "Say this is a test", "type": "text"}]}], "anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "temperature": 0.8, "top_p": 1, "stop_sequences": ["|"]},
        14, 10, model="claude-2.0", cassette="test_invoke_model_with_response_stream_with_content[anthropic.claude].yaml",
        note="Anthropic events base64 in chunk.bytes, message_stop adds amazon-bedrock-invocationMetrics (same numbers: counted once)",
    ),
    _botocore(
        "bedrock-invoke-stream-anthropic-tool-use", "invoke-with-response-stream", "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        {"messages": [{"role": "user", "content": [{"text": "What is the weather in Seattle and San Francisco today? Please give one tool call for Seattle and one for San Francisco", "type": "text"}]}], "anthropic_version": "bedrock-2023-05-31", "tools": [{"name": "get_current_weather", "description": "Get the current weather in a given location.", "input_schema": {"type": "object", "properties": {"location": {"type": "string", "description": "The name of the city"}}, "required": ["location"]}}], "max_tokens": 1000},
        392, 90, model="claude-3-5-sonnet-20240620", cassette="test_invoke_model_with_response_stream_with_content_tool_call[anthropic.claude].yaml",
        note="first interaction. message_delta says output_tokens 134, the final amazon-bedrock-invocationMetrics 90: Bedrock's own count, the last word, wins (last value per field; nothing is summed)",
    ),
    _botocore(
        "bedrock-invoke-stream-nova", "invoke-with-response-stream", "amazon.nova-micro-v1:0",
        {"messages": _SAY_TEST, "inferenceConfig": {"max_new_tokens": 10, "temperature": 0.8, "topP": 1, "stopSequences": ["|"]}, "schemaVersion": "messages-v1"},
        5, 10, cassette="test_invoke_model_with_response_stream_with_content[amazon.nova].yaml",
        note="the last chunk holds metadata.usage and amazon-bedrock-invocationMetrics in one object: counted once",
    ),
    _botocore(
        "bedrock-invoke-stream-titan", "invoke-with-response-stream", "amazon.titan-text-lite-v1",
        {"inputText": "Say this is a test", "textGenerationConfig": {"maxTokenCount": 10, "temperature": 0.8, "topP": 1, "stopSequences": ["|"]}},
        5, 10, cassette="test_invoke_model_with_response_stream_with_content[amazon.titan].yaml",
        note="one chunk with Titan's inputTextTokenCount / totalOutputTextTokenCount and the invocation metrics",
    ),
    _botocore(
        "bedrock-invoke-anthropic", "invoke", "anthropic.claude-v2",
        {'messages': [{'role': 'user', 'content': [{'text': 'Say this is a test', 'type': 'text'}]}], 'anthropic_version': 'bedrock-2023-05-31', 'max_tokens': 10, 'temperature': 0.8, 'top_p': 1, 'stop_sequences': ['|']},
        14, 10, model="claude-2.0", cassette="test_invoke_model_with_content[anthropic.claude].yaml",
        note="usage.input_tokens / output_tokens",
    ),
    _botocore(
        "bedrock-invoke-llama", "invoke", "meta.llama3-1-70b-instruct-v1:0",
        {'prompt': 'Say this is a test', 'max_gen_len': 10, 'temperature': 0.8, 'top_p': 1},
        5, 10, cassette="test_invoke_model_with_content[meta.llama].yaml",
        note="prompt_token_count / generation_token_count",
    ),
    _botocore(
        "bedrock-invoke-titan", "invoke", "amazon.titan-text-lite-v1",
        {'inputText': 'Say this is a test', 'textGenerationConfig': {'maxTokenCount': 10, 'temperature': 0.8, 'topP': 1, 'stopSequences': ['|']}},
        5, 10, cassette="test_invoke_model_with_content[amazon.titan].yaml",
        note="inputTextTokenCount / results[0].tokenCount",
    ),
    _botocore(
        "bedrock-invoke-nova", "invoke", "amazon.nova-micro-v1:0",
        {'messages': [{'role': 'user', 'content': [{'text': 'Say this is a test'}]}], 'inferenceConfig': {'max_new_tokens': 10, 'temperature': 0.8, 'topP': 1, 'stopSequences': ['|']}, 'schemaVersion': 'messages-v1'},
        5, 10, cassette="test_invoke_model_with_content[amazon.nova].yaml",
        note="usage.inputTokens / outputTokens",
    ),
    _botocore(
        "bedrock-invoke-cohere-command-r", "invoke", "cohere.command-r-v1:0",
        {'message': 'Say this is a test', 'max_tokens': 10, 'temperature': 0.8, 'p': 0.99, 'stop_sequences': ['|']},
        5, 10, cassette="test_invoke_model_with_content[cohere.command-r].yaml",
        note="no usage in the body: only the X-Amzn-Bedrock-*-Token-Count headers",
    ),
    _botocore(
        "bedrock-invoke-cohere-command", "invoke", "cohere.command-light-text-v14",
        {'prompt': 'Say this is a test', 'max_tokens': 10, 'temperature': 0.8, 'p': 1, 'stop_sequences': ['|']},
        5, 10, cassette="test_invoke_model_with_content[cohere.command].yaml",
        note="no usage in the body: only the headers",
    ),
    _botocore(
        "bedrock-invoke-mistral", "invoke", "mistral.mistral-7b-instruct-v0:2",
        {'prompt': 'Say this is a test', 'max_tokens': 10, 'temperature': 0.8, 'top_p': 1, 'stop': ['|']},
        6, 10, cassette="test_invoke_model_with_content[mistral.mistral].yaml",
        note="no usage in the body: only the headers",
    ),
]

CASES.append(
    WireCase(
        id="anthropic-messages-stream-web-search",
        provider="anthropic", operation="messages", method="POST", path="/v1/messages",
        request_body=_req({"max_tokens": 4096, "messages": [{"content": [{"text": "Give me the top 3 news in the world today.", "type": "text"}], "role": "user"}], "model": "claude-sonnet-4-0", "stream": True, "system": "You are a helpful assistant.\n\n", "tool_choice": {"type": "auto"}, "tools": [{"name": "web_search", "type": "web_search_20250305"}]}),
        content_type=_SSE_UTF8, body_file="anthropic-messages-stream-web-search.sse",
        prompt_tokens=31772, completion_tokens=644, total_tokens=31772 + 644, model="claude-sonnet-4-20250514",
        request_headers=_ANTHROPIC_HEADERS,
        source="pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_web_search_tool_stream.yaml",
        note="server tool (web_search, 2 requests): message_start says input_tokens 2050, the final message_delta the cumulative "
        "31772 (search results read back in); the last value wins. Shortened to 8 KB: content blocks after index 4 dropped, "
        "2 results per web_search_tool_result kept with encrypted_content cut to 24 characters (those events re-serialised "
        "compact); every other event, its whitespace padding and the usage events are as recorded; the request's null tool fields dropped",
    )
)

CASES += [
    WireCase(
        id="bedrock-invoke-titan-embed",
        provider="aws.bedrock", operation="invoke", method="POST", path="/model/amazon.titan-embed-text-v2:0/invoke",
        request_body=_req({"inputText": "Hello, world!", "normalize": True}),
        content_type=_JSON, body_file="bedrock-invoke-titan-embed.json",
        prompt_tokens=5, completion_tokens=0, total_tokens=5, model="amazon.titan-embed-text-v2:0",
        response_headers=(("X-Amzn-Bedrock-Input-Token-Count", "5"),),
        source="pydantic/pydantic-ai tests/cassettes/test_embeddings/TestBedrock.test_titan_v2_minimal.yaml",
        note="cassette stores the parsed body; written compact; both vectors cut from 1024 to 64 numbers. Usage "
        "(inputTextTokenCount) after the vector, and an input-count header with no output-count header",
    ),
    WireCase(
        id="bedrock-invoke-cohere-embed",
        provider="aws.bedrock", operation="invoke", method="POST", path="/model/cohere.embed-english-v3/invoke",
        request_body=_req({"texts": ["Hello, world!"], "input_type": "search_query", "truncate": "NONE"}),
        content_type=_JSON, body_file="bedrock-invoke-cohere-embed.json",
        prompt_tokens=4, completion_tokens=0, total_tokens=4, model="cohere.embed-english-v3",
        response_headers=(("X-Amzn-Bedrock-Input-Token-Count", "4"),),
        source="pydantic/pydantic-ai tests/cassettes/test_embeddings/TestBedrock.test_cohere_v3_minimal.yaml",
        note="cassette stores the parsed body; written compact; the vector cut from 1024 to 64 numbers; no usage in the body: the header only",
    ),
]

_PYDANTIC_AI = "pydantic/pydantic-ai tests/"
_GEMINI_SSE_NOTE = "raw body verbatim (each event ends \\r\\n\\r\\n as the Gemini API sends it)"
_GOOGLE_EMBED_NOTE = (
    "cassette stores the parsed body; written back on one line with ', ' and ': ' separators (the full body written so "
    "gives exactly the recorded Content-Length, {length}); each {dims}-number vector cut to its first 256 numbers, "
    "usage after it"
)

CASES += [
    # ------------------------------------------------------------------ Gemini: tool-use prompt, thoughts
    WireCase(
        id="gemini-stream-sse-google-search",
        provider="gcp.gemini", operation="streamGenerateContent", method="POST",
        path="/v1beta/models/gemini-2.5-pro:streamGenerateContent", query="alt=sse",
        request_body=_req({"contents": [{"parts": [{"text": "What is the weather in San Francisco today?"}], "role": "user"}], "generationConfig": {}, "systemInstruction": {"parts": [{"text": "You are a helpful chatbot."}], "role": "user"}, "tools": [{"googleSearch": {}}]}),
        content_type=_SSE, body_file="gemini-stream-sse-google-search.sse",
        # promptTokenCount 17 + toolUsePromptTokenCount 102; candidatesTokenCount 241 + thoughtsTokenCount 412.
        prompt_tokens=17 + 102, completion_tokens=241 + 412, total_tokens=772, reasoning_tokens=412,
        model="gemini-2.5-pro",
        source=_PYDANTIC_AI + "models/cassettes/test_google/test_google_model_web_search_tool_stream.yaml",
        note=_GEMINI_SSE_NOTE + "; every event repeats toolUsePromptTokenCount and thoughtsTokenCount; the last one "
        "carries groundingMetadata before its usage. Shortened to 8 KB: the 5th and 6th of 10 events dropped, the last "
        "event's searchEntryPoint.renderedContent (5 KB of HTML) cut to its first 240 bytes; all else verbatim",
    ),
    WireCase(
        id="gemini-stream-sse-code-execution",
        provider="gcp.gemini", operation="streamGenerateContent", method="POST",
        path="/v1beta/models/gemini-3-flash-preview:streamGenerateContent", query="alt=sse",
        request_body=_req({"contents": [{"parts": [{"text": "what is 65465-6544 * 65464-6+1.02255"}], "role": "user"}], "generationConfig": {"responseModalities": ["TEXT"]}, "systemInstruction": {"parts": [{"text": "Be concise and always use Python to do calculations no matter how small."}], "role": "user"}, "tools": [{"codeExecution": {}}]}),
        content_type=_SSE, body_file="gemini-stream-sse-code-execution.sse",
        # The last event: promptTokenCount 147 + toolUsePromptTokenCount 360; candidates 108 + thoughts 168.
        prompt_tokens=147 + 360, completion_tokens=108 + 168, total_tokens=783, reasoning_tokens=168,
        model="gemini-3-flash-preview",
        source=_PYDANTIC_AI + "models/google/cassettes/test_code_execution/test_code_execution_stream.yaml",
        note=_GEMINI_SSE_NOTE + "; usage is not monotonic: the codeExecutionResult event reports prompt 46 / total 46 "
        "with no candidates or thoughts, and only the last event has toolUsePromptTokenCount",
    ),
    WireCase(
        id="vertex-stream-sse-thinking",
        provider="gcp.vertex_ai", operation="streamGenerateContent", method="POST",
        path="/v1beta1/projects/pydantic-ai/locations/global/publishers/google/models/gemini-3-flash-preview:streamGenerateContent",
        query="alt=sse",
        request_body=_req({"contents": [{"parts": [{"text": "Reply with exactly: OK"}], "role": "user"}], "generationConfig": {"responseModalities": ["TEXT"]}}),
        content_type=_SSE, body_file="vertex-stream-sse-thinking.sse",
        prompt_tokens=5, completion_tokens=1 + 100, total_tokens=106, reasoning_tokens=100,
        model="gemini-3-flash-preview",
        source=_PYDANTIC_AI + "models/cassettes/test_google/test_google_vertex_service_tier_flex_stream.yaml",
        note="raw body verbatim: one event, thoughtsTokenCount 100 beside candidatesTokenCount 1 (and Vertex's trafficType)",
    ),
    # ------------------------------------------------------------------ Gemini: OpenAI compatibility, hidden thoughts
    WireCase(
        id="gemini-openai-chat-json-hidden-thoughts",
        provider="gcp.gemini", operation="chat.completions", method="POST", path="/v1beta/openai/chat/completions",
        request_body=_req({"messages": [{"content": "What is the current time?", "role": "user"}], "model": "gemini-2.5-pro-preview-05-06", "stream": False, "tool_choice": "auto", "tools": [{"function": {"description": "Get the current time.", "name": "get_current_time", "parameters": {"additionalProperties": False, "properties": {}, "type": "object"}}, "type": "function"}]}),
        content_type=_JSON, body_file="gemini-openai-chat-json-hidden-thoughts-1.json",
        # usage: prompt 35, completion 12, total 109: 62 thought tokens billed as output, reported nowhere else.
        prompt_tokens=35, completion_tokens=12 + 62, total_tokens=109, reasoning_tokens=62,
        model="gemini-2.5-pro-preview-05-06",
        source=_PYDANTIC_AI + "models/cassettes/test_openai/test_compatible_api_with_tool_calls_without_id.yaml (1st interaction)",
        note="cassette stores the parsed body; written compact in its field order, which gives exactly the recorded "
        "Content-Length (1166); no completion_tokens_details: the thoughts show only in total_tokens",
    ),
    WireCase(
        id="gemini-openai-chat-json-hidden-thoughts-after-tool",
        provider="gcp.gemini", operation="chat.completions", method="POST", path="/v1beta/openai/chat/completions",
        request_body=_req({"messages": [{"content": "What is the current time?", "role": "user"}, {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}", "name": "get_current_time"}, "id": "pyd_ai_cee885c699414386a7e14b7ec43cadbc", "type": "function"}]}, {"content": "Noon", "role": "tool", "tool_call_id": "pyd_ai_cee885c699414386a7e14b7ec43cadbc"}], "model": "gemini-2.5-pro-preview-05-06", "stream": False, "tool_choice": "auto", "tools": [{"function": {"description": "Get the current time.", "name": "get_current_time", "parameters": {"additionalProperties": False, "properties": {}, "type": "object"}}, "type": "function"}]}),
        content_type=_JSON, body_file="gemini-openai-chat-json-hidden-thoughts-2.json",
        prompt_tokens=66, completion_tokens=6 + 28, total_tokens=100, reasoning_tokens=28,
        model="gemini-2.5-pro-preview-05-06",
        source=_PYDANTIC_AI + "models/cassettes/test_openai/test_compatible_api_with_tool_calls_without_id.yaml (2nd interaction)",
        note="cassette stores the parsed body; written compact in its field order (exactly the recorded Content-Length, 755)",
    ),
    # ------------------------------------------------------------------ Gemini and Vertex AI embeddings
    WireCase(
        id="gemini-batch-embed-usage",
        provider="gcp.gemini", operation="batchEmbedContents", method="POST",
        path="/v1beta/models/gemini-embedding-2:batchEmbedContents",
        request_body=_req({"requests": [{"content": {"parts": [{"text": "task: search result | query: Hello, world!"}]}, "model": "models/gemini-embedding-2"}]}),
        content_type=_GOOGLE_JSON, body_file="gemini-batch-embed-usage.json",
        prompt_tokens=11, completion_tokens=0, total_tokens=11,
        source=_PYDANTIC_AI + "cassettes/test_embeddings/test_google_task_prefix[default-query].yaml",
        note=_GOOGLE_EMBED_NOTE.format(length=42647, dims=3072) + "; usageMetadata has promptTokenCount only (no total; "
        "its details key is promptTokenDetails, not promptTokensDetails)",
    ),
    WireCase(
        id="vertex-embed-content-usage",
        provider="gcp.vertex_ai", operation="embedContent", method="POST",
        path="/v1beta1/projects/pydantic-ai/locations/global/publishers/google/models/gemini-embedding-2:embedContent",
        request_body=_req({"content": {"parts": [{"text": "task: question answering | query: Hello, world!"}]}}),
        content_type=_GOOGLE_JSON, body_file="vertex-embed-content.json",
        prompt_tokens=11, completion_tokens=0, total_tokens=11,
        source=_PYDANTIC_AI + "cassettes/test_embeddings/test_google_task_prefix_vertex.yaml",
        note=_GOOGLE_EMBED_NOTE.format(length=42605, dims=3072),
    ),
]

#: Calls whose responses report no usage and whose text is not estimated (embeddings of
#: models that return none): recorded as calls with no tokens, never as invented ones.
UNREPORTED_CASES: list[WireCase] = [
    _no_tokens(
        id="gemini-batch-embed-no-usage", provider="gcp.gemini", operation="batchEmbedContents", method="POST",
        path="/v1beta/models/gemini-embedding-2-preview:batchEmbedContents",
        request_body=_req({"requests": [{"content": {"parts": [{"text": "hello"}]}, "model": "models/gemini-embedding-2-preview", "taskType": "RETRIEVAL_DOCUMENT"}, {"content": {"parts": [{"text": "world"}]}, "model": "models/gemini-embedding-2-preview", "taskType": "RETRIEVAL_DOCUMENT"}]}),
        content_type=_GOOGLE_JSON, body_file="gemini-batch-embed-no-usage.json",
        source=_PYDANTIC_AI + "cassettes/test_embeddings/TestGoogle.test_documents.yaml",
        note=_GOOGLE_EMBED_NOTE.format(length=84732, dims=3072).replace(", usage after it", "") + "; no usageMetadata at all",
    ),
]

# ---------------------------------------------------------------- audio tokens, Azure v1, Foundry, SSE fields
_AZURE_V1_VERCEL = "vercel/ai packages/azure/src/__fixtures__/"
_AZURE_V1_URL = ("the provider builds https://{resource}.openai.azure.com/openai/v1{path}?api-version=v1 and sends an api-key "
                 "header (packages/azure/src/azure-openai-provider.ts)")
_AZURE_INFERENCE_DOCS = "MicrosoftDocs/azure-docs articles/ai-studio/reference/"

CASES += [
    WireCase(
        id="openai-chat-json-audio-input",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"messages": [{"role": "user", "content": [{"text": "Whose name is mentioned in the audio?", "type": "text"}, {"input_audio": {"data": "SUQz", "format": "mp3"}, "type": "input_audio"}]}], "model": "gpt-4o-audio-preview", "n": 1, "stream": False}),
        content_type=_JSON, body_file="openai-chat-json-audio-input.json",
        prompt_tokens=64, completion_tokens=9, total_tokens=73, model="gpt-4o-audio-preview-2024-12-17",
        source="pydantic/pydantic-ai tests/models/cassettes/test_openai/test_audio_as_binary_content_input.yaml",
        note="cassette stores the parsed body; re-serialised in OpenAI's field order, indented as OpenAI sends it; the request's "
        "base64 audio cut to 4 characters. prompt_tokens_details.audio_tokens (44) is a part of prompt_tokens (44 audio + 20 "
        "text = 64), as OpenAI counts it: nothing is added",
    ),
    WireCase(
        id="openai-chat-json-audio-output",
        provider="openai", operation="chat.completions", method="POST", path="/v1/chat/completions",
        request_body=_req({"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}, "messages": [{"role": "user", "content": "hello"}]}),
        content_type=_JSON, body_file="openai-chat-json-audio-output.json",
        prompt_tokens=8, completion_tokens=54, total_tokens=62, model="gpt-4o-audio-preview",
        source="https://302ai-jp.apifox.cn/225241593e0 (example response of an OpenAI relay, chatcmpl-Cx5qf8QgUbf1yIHPdZ08WFEFxrVza)",
        note="the page prints the body with message.audio.data emptied; indented as OpenAI sends it. "
        "completion_tokens_details.audio_tokens (37) is a part of completion_tokens (37 audio + 17 text = 54)",
    ),
    WireCase(
        id="azure-v1-responses-json-api-key",
        provider="azure.ai.openai", operation="responses", method="POST", path="/openai/v1/responses", query="api-version=v1",
        request_body=b"", content_type=_JSON, body_file="azure-v1-responses-json.json",
        prompt_tokens=11, completion_tokens=11, total_tokens=22, model="gpt-5.1",
        request_headers=(("api-key", "test-api-key"),),
        source=_AZURE_V1_VERCEL + "azure-text.1.json",
        note="verbatim (with Azure's content_filters); " + _AZURE_V1_URL + "; the fixture keeps no request body",
    ),
    WireCase(
        id="azure-v1-responses-stream-api-key",
        provider="azure.ai.openai", operation="responses", method="POST", path="/openai/v1/responses", query="api-version=v1",
        request_body=b"", content_type=_SSE_UTF8, body_file="azure-v1-responses-stream.sse",
        prompt_tokens=11, completion_tokens=11, total_tokens=22, model="gpt-5.1",
        request_headers=(("api-key", "test-api-key"),),
        source=_AZURE_V1_VERCEL + "azure-text.1.chunks.txt",
        note="payloads verbatim, framed as the Responses API sends them (event: <type> + data:, no [DONE]); " + _AZURE_V1_URL
        + "; the fixture keeps no request body, nor the response headers (Content-Type as OpenAI's Responses streams)",
    ),
    WireCase(
        id="azure-v1-responses-json-host",
        provider="azure.ai.openai", operation="responses", method="POST", path="/openai/v1/responses",
        request_body=_req({"include": ["reasoning.encrypted_content"], "input": [{"content": "What is the capital of France? Answer in one word.", "role": "user"}], "model": "gpt-5.4", "reasoning": {"context": "all_turns"}, "stream": False}),
        content_type=_JSON, body_file="azure-v1-responses-json-host.json",
        prompt_tokens=18, completion_tokens=5, total_tokens=23, model="gpt-5.4",
        request_headers=(("host", "pydantic-ai-realtime-dev.openai.azure.com"),),
        source="pydantic/pydantic-ai tests/models/cassettes/test_openai_responses/test_azure_responses_reasoning_context_default_wire_contract[gpt-5.4].yaml",
        note="POST https://pydantic-ai-realtime-dev.openai.azure.com/openai/v1/responses with no api-version and no api-key "
        "(the cassette keeps the Host header only): Azure's by its host. The parsed body written compact in the cassette's "
        "(sorted) key order",
    ),
    WireCase(
        id="azure-inference-chat-json",
        provider="azure.ai.inference", operation="chat.completions", method="POST", path="/models/chat/completions",
        query="api-version=2024-05-01-preview",
        request_body=_req({"messages": [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Explain Riemann's conjecture"}, {"role": "assistant", "content": "The Riemann Conjecture is a deep mathematical conjecture around prime numbers and how they can be predicted."}, {"role": "user", "content": "Ist it proved?"}], "frequency_penalty": 0, "presence_penalty": 0, "max_tokens": 256, "seed": 42, "stop": "<|endoftext|>", "stream": False, "temperature": 0, "top_p": 1, "response_format": "text"}),
        content_type=_JSON, body_file="azure-inference-chat-json.json",
        prompt_tokens=205, completion_tokens=5, total_tokens=210, model="llama2-70b-chat",
        source=_AZURE_INFERENCE_DOCS + "reference-model-inference-chat-completions.md (Azure AI Model Inference API reference, sample response)",
        note="indented as printed; the path is the reference's /chat/completions under a Foundry resource's /models endpoint "
        "({resource}.services.ai.azure.com/models); the sample request's assistant turn shortened",
    ),
    WireCase(
        id="azure-inference-embeddings-json",
        provider="azure.ai.inference", operation="embeddings", method="POST", path="/models/embeddings",
        query="api-version=2024-05-01-preview",
        request_body=_req({"input": ["This is a very good text"], "input_type": "text", "encoding_format": "float", "dimensions": 1024}),
        content_type=_JSON, body_file="azure-inference-embeddings-json.json",
        prompt_tokens=15, completion_tokens=0, total_tokens=15, model="BERT",
        source=_AZURE_INFERENCE_DOCS + "reference-model-inference-embeddings.md (Azure AI Model Inference API reference, sample response)",
        note="indented as printed (the sample's vector has 12 zeros); under the /models endpoint as for chat",
    ),
    WireCase(
        id="zai-chat-stream-charset-without-space",
        provider="openai", operation="chat.completions", method="POST", path="/api/paas/v4/chat/completions",
        request_body=_req({"messages": [{"content": "What is 2 + 2?", "role": "user"}], "model": "glm-4.7", "stream": True, "stream_options": {"include_usage": True}, "thinking": {"clear_thinking": False, "type": "enabled"}}),
        content_type="text/event-stream;charset=UTF-8", body_file="zai-chat-stream-charset-nospace.sse",
        prompt_tokens=13, completion_tokens=564, total_tokens=577, reasoning_tokens=561, model="glm-4.7",
        source="pydantic/pydantic-ai tests/models/cassettes/test_zai/test_zai_thinking_stream.yaml",
        note="Content-Type exactly as recorded (no space before charset); raw body with 86 of its 94 events dropped (the first "
        "three reasoning_content chunks and the last five kept: answer, finish chunk with usage, [DONE]); an OpenAI-compatible "
        "server, so reported as openai",
    ),
    WireCase(
        id="dashscope-multimodal-stream-id-fields",
        provider="alibaba.dashscope", operation="generation", method="POST",
        path="/api/v1/services/aigc/multimodal-generation/generation",
        request_body=b"", content_type=_SSE, body_file="dashscope-multimodal-stream-id-fields.sse",
        prompt_tokens=92, completion_tokens=10, total_tokens=102,
        request_headers=(("X-DashScope-SSE", "enable"),),
        source="erda-project/erda internal/apps/ai-proxy/filters/dashscope-director/resp_example.md (qwen-vl stream)",
        note="events verbatim as captured: id:, event:result and a :HTTP_STATUS/200 comment before each data: line, no space after "
        "any colon; the capture kept events 1 and 5 of the stream (usage cumulative: the last wins) and no headers or request "
        "(Content-Type as an SSE stream declares it; each event ends with a blank line); the path is DashScope's for qwen-vl",
    ),
]

#: Calls that bill no tokens (token counting, moderation, a failed response): recorded as calls with no usage,
#: whatever their bodies hold.
UNBILLED_CASES: list[WireCase] = [
    _no_tokens(
        id="unbilled-anthropic-count-tokens", provider="anthropic", operation="count_tokens", method="POST",
        path="/v1/messages/count_tokens",
        request_body=_req({"messages": [{"content": [{"text": "Please explain what Python is and its main use cases.", "type": "text"}], "role": "user"}], "model": "claude-sonnet-4-5"}),
        content_type=_JSON, body_file="anthropic-count-tokens.json",
        request_headers=_ANTHROPIC_HEADERS,
        source="pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_cache_count_tokens.yaml (1st interaction)",
        note="cassette stores the parsed body; written compact; the request's repeated prompt shortened; path without ?beta=true",
    ),
    _no_tokens(
        id="unbilled-gemini-count-tokens", provider="gcp.gemini", operation="countTokens", method="POST",
        path="/v1beta/models/gemini-embedding-2-preview:countTokens",
        request_body=_req({"contents": [{"parts": [{"text": "Hello, world!"}], "role": "user"}]}),
        content_type=_GOOGLE_JSON, body_file="gemini-count-tokens.json",
        source="pydantic/pydantic-ai tests/cassettes/test_embeddings/TestGoogle.test_count_tokens.yaml",
        note="cassette stores the parsed body; written compact",
    ),
    _no_tokens(
        id="unbilled-bedrock-count-tokens", provider="aws.bedrock", operation="count_tokens", method="POST",
        path="/model/anthropic.claude-sonnet-4-20250514-v1:0/count-tokens",
        request_body=_req({"input": {"invokeModel": {"body": "eyJhbnRocm9waWNfdmVyc2lvbiI6ImJlZHJvY2stMjAyMy0wNS0zMSJ9"}}}),
        content_type=_JSON, body_file="bedrock-count-tokens.json",
        source="pydantic/pydantic-ai tests/models/cassettes/test_anthropic_bedrock_count_tokens/test_anthropic_bedrock_count_tokens_real_api.yaml",
        note="cassette stores the parsed body; written compact; the request's base64 InvokeModel body shortened",
    ),
    _no_tokens(
        id="failed-openai-responses-stream", provider="openai", operation="responses", method="POST", path="/v1/responses",
        request_body=_req({"model": "gpt-5.1", "input": "Summarise the repository.", "stream": True}),
        content_type=_SSE, body_file="openai-responses-stream-failed.sse",
        source="openai/codex codex-rs/core/src/client.rs (test error_when_error_event: a rate-limited response.failed event)",
        note="the test's event framed as the test frames it (event: line, one data: line); a failed response bills nothing "
        "(here usage is null; a failed event that carried usage would not count either)",
    ),
    _no_tokens(
        id="unbilled-openai-moderations", provider="openai", operation="moderations", method="POST", path="/v1/moderations",
        request_body=_req({"input": "I want to kill them."}),
        content_type=_JSON, body_file="openai-moderations.json",
        source="https://platform.openai.com/docs/api-reference/moderations/create (example response)",
        note="the printed example's trailing commas removed; indented as printed",
    ),
]

NON_LLM_CASES: list[WireCase] = [
    _not_llm("non-llm-health-json", "/health", _JSON, "non-llm-health.json"),
    _not_llm("non-llm-items-list-json", "/api/items", _JSON, "non-llm-items-list.json"),
    _not_llm(
        "non-llm-html-page", "/", "text/html; charset=utf-8", "non-llm-page.html",
        note="mentions prompt_tokens/completion_tokens in its text; it is still not an LLM response",
    ),
]

NON_LLM_STATUS: list[tuple[WireCase, int]] = [
    (
        _no_tokens(
            id="openai-error-429-rate-limit", provider="openai", operation="chat.completions", method="POST",
            path="/v1/chat/completions",
            request_body=_req({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Explain this chess move."}]}),
            content_type=_JSON, body_file="error-openai-429-rate-limit.json",
            source="message, type, param and code of a real OpenAI 429 (RateLimitError logged in a public chess-coach report); OpenAI's 4-space error layout",
            note="the log had the Python repr of the body; written back as OpenAI's JSON",
        ),
        429,
    ),
    (
        _no_tokens(
            id="anthropic-error-529-overloaded", provider="anthropic", operation="messages", method="POST",
            path="/v1/messages",
            request_body=_req({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}),
            content_type=_JSON, body_file="error-anthropic-529-overloaded.json",
            source="HTTP 529 body with request_id logged verbatim in a public request-log report; error shape per Anthropic's API errors docs",
            request_headers=_ANTHROPIC_HEADERS,
        ),
        529,
    ),
    (
        _no_tokens(
            id="gemini-error-400-invalid-argument", provider="gcp.gemini", operation="generateContent", method="POST",
            path="/v1beta/models/gemini-2.5-flash:generateContent",
            request_body=_req({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"presencePenalty": 0.5}}),
            content_type=_GOOGLE_JSON, body_file="error-gemini-400-invalid-argument.json",
            source="vercel/ai packages/google/src/__fixtures__/issue-8943-gemini-2.5-flash-error.json",
            note="verbatim",
        ),
        400,
    ),
]
