"""Every provider fact, one declaration per provider: the only place a provider is described.

Routing (:mod:`.routes`), usage reading (:mod:`.objects`), the request peek's fields, the
extractor's hints, the API-key headers and the OpenTelemetry names are all derived from
:data:`PROVIDERS` (:mod:`.facts`), so a field list can no longer drift from the code that
reads it. Adding a provider is one :class:`Provider` here plus its recorded fixtures in
``tests/wire/``.

Provider names follow OpenTelemetry's ``gen_ai.provider.name`` values. OpenAI-compatible
servers (Mistral, vLLM, DeepSeek, Groq...) share OpenAI's paths and wire format, so they
are reported as ``openai`` unless the middleware is told otherwise with ``provider=``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import usage as u

#: A place in a JSON object: the keys leading to it (``()`` is the object itself).
Path = tuple[str, ...]
#: The same, with array indices allowed (a field a usage reader reads).
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class UsageShape:
    """One way of writing token counts in a usage object.

    ``read`` is tried when the object has any of ``markers`` (always, when there are
    none); it returns None when the object turns out not to be of this shape after all,
    and the next shape is tried.
    """

    name: str
    markers: tuple[str, ...]
    read: Callable[[Mapping[str, Any]], u.Counts | None]
    #: What ``read`` reads, relative to the usage object, when that is the JSON object
    #: itself (then the scanner must capture each field); default: the markers.
    fields: tuple[FieldPath, ...] = ()

    @property
    def scanned(self) -> tuple[FieldPath, ...]:
        return self.fields or tuple((m,) for m in self.markers)


#: Where a usage object sits in a JSON object (``()``: the object itself) and the shapes
#: tried there, in order.
UsageAt = tuple[Path, tuple[UsageShape, ...]]


def at(path: Path, *shapes: UsageShape) -> UsageAt:
    return path, shapes


CHAT = UsageShape("openai.chat", ("prompt_tokens", "completion_tokens"), u.read_chat)
RESPONSES = UsageShape("openai.responses", ("input_tokens", "output_tokens"), u.read_responses)
ANTHROPIC = UsageShape("anthropic", ("input_tokens", "output_tokens"), u.read_anthropic)
CONVERSE = UsageShape("aws.bedrock.converse", ("inputTokens", "outputTokens"), u.read_converse)
COHERE = UsageShape("cohere", ("tokens", "billed_units"), u.read_cohere)
GEMINI = UsageShape("gemini", (), u.read_gemini)
OLLAMA = UsageShape("ollama", ("eval_count", "prompt_eval_count"), u.read_ollama)
BEDROCK_METRICS = UsageShape("aws.bedrock.invocation_metrics", ("inputTokenCount", "outputTokenCount"), u.read_invocation_metrics)
TITAN = UsageShape(
    "aws.bedrock.titan",
    ("inputTextTokenCount", "totalOutputTextTokenCount"),
    u.read_titan,
    fields=(("inputTextTokenCount",), ("totalOutputTextTokenCount",), ("results", 0, "tokenCount")),
)
LLAMA = UsageShape("aws.bedrock.llama", ("prompt_token_count", "generation_token_count"), u.read_llama)


@dataclass(frozen=True)
class Operation:
    """One API of a provider, as the path names it."""

    #: Our name for it: the ``Operation ID`` dimension value.
    name: str
    #: ``gen_ai.operation.name`` (a well-known value where one fits, else our name).
    otel: str
    #: Path endings that mean this operation (matched by their end, so an app that
    #: proxies a provider under a prefix is recognised as well as a direct call).
    suffixes: tuple[str, ...] = ()
    #: What the provider's ``path`` pattern captures as ``op`` for this operation.
    tails: tuple[str, ...] = ()
    #: Whether counting the response's text for an estimate is worth it: False when there
    #: is no generated text (embeddings, token counts) or usage always comes (Responses).
    estimate_text: bool = True
    #: Path parts that make a suffix mean something else (OpenAI Assistants' threads
    #: have ``/messages`` too): such a path is no LLM call at all.
    not_under: tuple[str, ...] = ()
    #: False for calls that bill no tokens (token counting, moderation): they are
    #: recorded as calls, and whatever their bodies say counts nothing.
    billed: bool = True
    #: Its chunks' text fields when not the provider's (Responses: ``delta``; .done events repeat it).
    stream_text: tuple[str, ...] | None = None
    #: True when the operation always streams its answer, whatever the body format
    #: (Gemini's ``streamGenerateContent`` without ``alt=sse``: a JSON array written one
    #: element at a time), so the call is a streamed one with a time to first chunk.
    streams: bool = False


@dataclass(frozen=True)
class Claim:
    """Calls that route to another provider's API but are this provider's, when the
    request says so.

    OpenAI's API is served behind many hosts: Azure OpenAI's v1 API
    (``{resource}.openai.azure.com/openai/v1/chat/completions``) and Amazon Bedrock's
    OpenAI-compatible endpoints share their paths with Groq's (``api.groq.com/openai/v1``),
    so the path alone cannot tell them apart. The host an outgoing call goes to can; so can
    a header that only this provider's clients send (the ``api-key`` of Azure's SDKs), on
    paths under ``under`` (an app that serves Azure's API behind its own host).
    """

    #: The provider whose routes are claimed (``openai``: the OpenAI-compatible default).
    of: str
    #: Host names of this provider's endpoints, lower case, ``*`` standing for one DNS
    #: label (a resource or region name): ``*.openai.azure.com``.
    hosts: tuple[str, ...] = ()
    #: Request headers only this provider's clients send (any one of them), honoured on
    #: paths with ``under``.
    headers: tuple[str, ...] = ()
    under: str = ""


@dataclass(frozen=True)
class Provider:
    """Everything the package knows about one provider."""

    #: ``gen_ai.provider.name``.
    name: str
    operations: tuple[Operation, ...]
    #: A path pattern (``re``, searched) with groups ``model`` and ``op``; ``{ops}`` is
    #: replaced by the operations' ``tails``. None: the operations' suffixes route.
    path: str | None = None
    #: Substrings a path must all contain for ``path`` to apply (Vertex AI's project).
    path_requires: tuple[str, ...] = ()
    #: Where usage objects sit in a response's JSON objects, and their shapes.
    usage: tuple[UsageAt, ...] = ()
    #: Where a response names its model.
    model_at: tuple[Path, ...] = ()
    #: Fields of streamed chunks whose strings are generated text (for estimates).
    stream_text: tuple[str, ...] = ()
    #: Top-level fields of a whole JSON response whose strings are generated text.
    response_text: tuple[str, ...] = ()
    #: Top-level request fields whose strings are the prompt.
    prompt_roots: tuple[str, ...] = ()
    #: Request fields the peek keeps (``stream``, ``user``, ``stream_options.include_usage``).
    request_fields: tuple[Path, ...] = ()
    #: Request headers that carry the API key (for the Subscription ID), and a query
    #: parameter that may.
    key_headers: tuple[str, ...] = ()
    key_query: str | None = None
    #: Request headers (all of them) and query parameters (all) that only this
    #: provider's clients send: the provider of a path we do not recognise.
    sent_headers: tuple[str, ...] = ()
    sent_query: tuple[str, ...] = ()
    #: Whether its streams always carry usage (then counting their text is wasted work).
    streams_report_usage: bool = False
    #: How it streams: ``sse``, ``ndjson``, or ``eventstream`` (AWS's binary framing). The
    #: SSE fast path's hint is derived from the providers that stream SSE.
    stream_format: str = "sse"
    #: (key, value) pairs that mark a JSON object whose usage is not billed (the Responses
    #: API's ``response.failed``): its counts are ignored.
    unbilled_objects: tuple[tuple[str, str], ...] = ()
    #: Response headers that report usage (authoritative when present): input, output,
    #: cache read, cache write.
    usage_headers: tuple[str, str, str, str] | None = None
    #: Whether its total counts output that its completion count leaves out (Gemini's
    #: OpenAI compatibility endpoint bills hidden thoughts as output but reports them only
    #: in ``total_tokens``): what the total holds beyond prompt + completion is counted as
    #: completion, and as reasoning, so that prompt + completion = total.
    hidden_output_in_total: bool = False
    #: Another provider's routes that are this one's when host or headers say so.
    claims: tuple[Claim, ...] = ()


#: The fields that describe a provider's request and response bodies (its wire format).
_BODY_FIELDS = ("usage", "model_at", "stream_text", "response_text", "prompt_roots", "request_fields")


def _bodies_of(provider: Provider) -> dict[str, Any]:
    """``provider``'s wire fields, for a provider that serves the same bodies behind its own
    paths (Azure OpenAI, Azure AI Foundry and Gemini's compatibility endpoint: OpenAI's;
    Vertex AI: Gemini's and Anthropic's), so each wire format is declared once."""
    return {name: getattr(provider, name) for name in _BODY_FIELDS}


_OPENAI_OPERATIONS = (
    Operation("chat.completions", "chat", ("/chat/completions",), ("chat/completions",)),
    Operation("completions", "text_completion", ("/completions",), ("completions",)),
    Operation("embeddings", "embeddings", ("/embeddings",), ("embeddings",), estimate_text=False),
    Operation("responses", "chat", ("/responses",), estimate_text=False, stream_text=("delta",)),
    Operation("moderations", "moderations", ("/moderations",), estimate_text=False, billed=False),
)

_OPENAI_TEXT = ("content", "refusal", "delta", "reasoning_content", "reasoning", "arguments", "text", "transcript")

_GEMINI_OPERATIONS = (
    Operation("generateContent", "generate_content", tails=("generateContent",)),
    Operation("streamGenerateContent", "generate_content", tails=("streamGenerateContent",), streams=True),
    Operation("embedContent", "embeddings", tails=("embedContent",), estimate_text=False),
    Operation("batchEmbedContents", "embeddings", tails=("batchEmbedContents",), estimate_text=False),
    Operation("countTokens", "countTokens", tails=("countTokens",), estimate_text=False, billed=False),
)
_GEMINI_PATH = r"/models/(?P<model>[^/:]+):(?P<op>{ops})$"


OPENAI = Provider(
    name="openai",
    operations=_OPENAI_OPERATIONS,
    usage=(at(("usage",), CHAT, RESPONSES), at(("response", "usage"), CHAT, RESPONSES)),
    model_at=(("model",), ("response", "model")),
    stream_text=_OPENAI_TEXT,
    response_text=("choices", "output"),
    prompt_roots=("messages", "prompt", "input", "instructions"),
    request_fields=(("model",), ("stream",), ("user",), ("stream_options", "include_usage")),
    key_headers=("Authorization",),
    # A failed response bills nothing; response.incomplete (cut short by max_output_tokens
    # or a content filter) is billed and counted.
    unbilled_objects=(("type", "response.failed"),),
)

AZURE_OPENAI = Provider(
    name="azure.ai.openai",
    # Any deployment API: the ones not listed are named after their path ("audio.speech").
    operations=_OPENAI_OPERATIONS[:3],
    path=r"/openai/deployments/(?P<model>[^/]+)/(?P<op>.+?)/?$",
    **_bodies_of(OPENAI),
    # Ocp-Apim-Subscription-Key: Azure API Management's key, in front of Azure OpenAI.
    key_headers=("api-key", "Ocp-Apim-Subscription-Key"),
    sent_headers=("api-key",),
    sent_query=("api-version",),
    # The v1 API (/openai/v1/chat/completions, /responses, /embeddings: the model in the
    # body, no api-version needed) is OpenAI's paths under /openai/, which Groq serves too
    # (api.groq.com/openai/v1): Azure's when the host is an Azure OpenAI or Foundry
    # resource's, or an Azure client sends its api-key (or Azure API Management's
    # subscription key, in front of Azure OpenAI).
    claims=(
        Claim(
            "openai",
            hosts=("*.openai.azure.com", "*.cognitiveservices.azure.com", "*.services.ai.azure.com"),
            headers=("api-key", "Ocp-Apim-Subscription-Key"),
            under="/openai/",
        ),
    ),
)

ANTHROPIC_MESSAGES = Provider(
    name="anthropic",
    operations=(
        Operation("messages", "chat", ("/messages",), not_under=("/threads/",)),
        Operation("count_tokens", "count_tokens", ("/messages/count_tokens",), estimate_text=False, billed=False),
    ),
    usage=(at(("usage",), ANTHROPIC), at(("message", "usage"), ANTHROPIC)),
    model_at=(("model",), ("message", "model")),
    stream_text=("text", "thinking", "partial_json"),
    response_text=("content",),
    prompt_roots=("messages", "system"),
    request_fields=(("model",), ("stream",), ("metadata", "user_id")),
    key_headers=("x-api-key",),
    sent_headers=("anthropic-version",),
    streams_report_usage=True,
)

GEMINI_API = Provider(
    name="gcp.gemini",
    operations=_GEMINI_OPERATIONS,
    path=_GEMINI_PATH,
    usage=(at(("usageMetadata",), GEMINI),),
    model_at=(("modelVersion",),),
    stream_text=("text",),
    response_text=("candidates",),
    prompt_roots=("contents", "systemInstruction"),
    key_headers=("x-goog-api-key",),
    key_query="key",
    sent_headers=("x-goog-api-key",),
    streams_report_usage=True,
)


#: Gemini's OpenAI compatibility endpoint: OpenAI's bodies behind Gemini's path. Its usage
#: has no reasoning field: a thinking model's thoughts show only in ``total_tokens``
#: (recorded: prompt 35, completion 12, total 109).
GEMINI_OPENAI = Provider(
    name="gcp.gemini",
    operations=(_OPENAI_OPERATIONS[0], _OPENAI_OPERATIONS[2]),
    path=r"/v1beta/openai/(?P<op>{ops})/?$",
    **_bodies_of(OPENAI),
    key_headers=OPENAI.key_headers,
    hidden_output_in_total=True,
)


VERTEX_AI = Provider(
    name="gcp.vertex_ai",
    operations=_GEMINI_OPERATIONS,
    path=_GEMINI_PATH,
    path_requires=("/projects/", "/locations/"),
    **_bodies_of(GEMINI_API),
    streams_report_usage=True,
)

#: Anthropic's models on Vertex AI: the Messages API's bodies behind Vertex's paths.
VERTEX_ANTHROPIC = Provider(
    name="gcp.vertex_ai",
    operations=(
        Operation("rawPredict", "chat", tails=("rawPredict",)),
        Operation("streamRawPredict", "chat", tails=("streamRawPredict",), streams=True),
    ),
    path=r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<op>{ops})$",
    path_requires=("/publishers/anthropic/",),
    **_bodies_of(ANTHROPIC_MESSAGES),
    streams_report_usage=True,
)

#: Azure AI Foundry Models (the Azure AI model inference API): one endpoint for every model
#: deployed on a Foundry resource (``{resource}.services.ai.azure.com/models/chat/completions
#: ?api-version=2024-05-01-preview``, the deployment named by ``model``), and serverless
#: endpoints of one model (``{endpoint}.{region}.models.ai.azure.com/chat/completions``).
#: OpenAI's chat and embeddings bodies.
AZURE_AI_INFERENCE = Provider(
    name="azure.ai.inference",
    operations=(
        Operation("chat.completions", "chat", ("/models/chat/completions",)),
        Operation("embeddings", "embeddings", ("/models/embeddings", "/models/images/embeddings"), estimate_text=False),
    ),
    **_bodies_of(OPENAI),
    key_headers=("api-key", "Authorization"),
    claims=(Claim("openai", hosts=("*.*.models.ai.azure.com", "*.*.inference.ai.azure.com", "models.inference.ai.azure.com")),),
)

BEDROCK = Provider(
    name="aws.bedrock",
    operations=(
        Operation("converse", "chat", tails=("converse", "converse-stream")),
        # InvokeModel: each model family's own body; the operation is named as AWS does.
        Operation("invoke", "invoke_model", tails=("invoke", "invoke-with-response-stream")),
        Operation("count_tokens", "count_tokens", tails=("count-tokens",), estimate_text=False, billed=False),
    ),
    path=r"/model/(?P<model>[^/]+)/(?P<op>{ops})$",
    usage=(
        at(("usage",), CONVERSE),  # Converse; ConverseStream's metadata event; Nova
        at(("amazon-bedrock-invocationMetrics",), BEDROCK_METRICS),  # last chunk of InvokeModel streams
        at(("metadata", "usage"), CONVERSE),  # Nova's InvokeModel stream
        at((), TITAN, LLAMA),
    ),
    stream_text=("text",),
    response_text=("output",),
    prompt_roots=("messages", "system", "inputText", "prompt"),
    streams_report_usage=True,
    stream_format="eventstream",
    # Bedrock's OpenAI-compatible Chat Completions and Responses APIs
    # (bedrock-runtime.{region}.amazonaws.com/openai/v1/..., bedrock-mantle.{region}.api.aws/v1/...):
    # OpenAI's paths and bodies, Bedrock's calls. Only Bedrock's own hosts: a gateway of
    # one's own on AWS (API Gateway, a load balancer) is no Bedrock call.
    claims=(
        Claim(
            "openai",
            hosts=("bedrock-runtime.*.amazonaws.com", "bedrock-runtime-fips.*.amazonaws.com", "bedrock-mantle.*.api.aws"),
        ),
    ),
    usage_headers=(
        "X-Amzn-Bedrock-Input-Token-Count",
        "X-Amzn-Bedrock-Output-Token-Count",
        "X-Amzn-Bedrock-Cache-Read-Input-Token-Count",
        "X-Amzn-Bedrock-Cache-Write-Input-Token-Count",
    ),
)

OLLAMA_API = Provider(
    name="ollama",
    operations=(
        Operation("chat", "chat", ("/api/chat",)),
        Operation("generate", "text_completion", ("/api/generate",)),
        Operation("embeddings", "embeddings", ("/api/embed", "/api/embeddings"), estimate_text=False),
    ),
    usage=(at((), OLLAMA),),
    model_at=(("model",),),
    stream_text=("content", "response"),
    response_text=("message", "response"),
    prompt_roots=("messages", "prompt"),
    streams_report_usage=True,
    stream_format="ndjson",
)

COHERE_V2 = Provider(
    name="cohere",
    operations=(
        Operation("chat", "chat", ("/v2/chat",)),
        Operation("embeddings", "embeddings", ("/v2/embed",), estimate_text=False),
    ),
    usage=(at(("usage",), COHERE), at(("delta", "usage"), COHERE)),
    model_at=(("model",),),
    stream_text=("text",),
    response_text=("message", "text", "generations"),
    prompt_roots=("messages", "message"),
    streams_report_usage=True,
)

#: Alibaba Cloud Model Studio's own API (DashScope: Qwen and the models it hosts); its
#: OpenAI-compatible mode (``/compatible-mode/v1/chat/completions``) routes as OpenAI's.
#: Streams (``X-DashScope-SSE: enable``) send ``id:``, ``event:result`` and a
#: ``:HTTP_STATUS/200`` comment with every event, and cumulative usage in each.
DASHSCOPE = Provider(
    name="alibaba.dashscope",
    operations=(
        Operation(
            "generation",
            "chat",
            ("/services/aigc/text-generation/generation", "/services/aigc/multimodal-generation/generation"),
        ),
    ),
    # input/output (and total) tokens: read by the Responses or the Anthropic shape.
    usage=(at(("usage",), RESPONSES, ANTHROPIC),),
    stream_text=("text",),
    response_text=("output",),
    prompt_roots=("input",),
    request_fields=(("model",),),
    key_headers=("Authorization",),
    streams_report_usage=True,
)

#: In the order usage shapes are tried (OpenAI's before Anthropic's: both have
#: ``input_tokens``, only the Responses API's has details or a total).
PROVIDERS: tuple[Provider, ...] = (
    OPENAI,
    AZURE_OPENAI,
    AZURE_AI_INFERENCE,
    ANTHROPIC_MESSAGES,
    GEMINI_API,
    GEMINI_OPENAI,
    VERTEX_AI,
    VERTEX_ANTHROPIC,
    BEDROCK,
    OLLAMA_API,
    COHERE_V2,
    DASHSCOPE,
)
