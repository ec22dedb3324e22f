"""The provider table, and what is derived from it: one declaration per provider."""

from __future__ import annotations

import json

import pytest

from llm_metrics_middleware._core.extractor import JSON, SSE, UsageExtractor
from llm_metrics_middleware._core.jsonscan import JSONScanner
from llm_metrics_middleware._core.providers import facts, route_of
from llm_metrics_middleware._core.providers.objects import OBJECT_PATHS, counts_from_object, model_from_object
from llm_metrics_middleware._core.providers.routes import claimed
from llm_metrics_middleware._core.providers.table import PROVIDERS, Provider

# (path, provider, operation, path model): at least one path per provider and operation kind.
ROUTES = [
    ("/v1/chat/completions", "openai", "chat.completions", None),
    ("/llm/openai/v1/chat/completions/", "openai", "chat.completions", None),
    ("/v1/completions", "openai", "completions", None),
    ("/v1/embeddings", "openai", "embeddings", None),
    ("/v1/responses", "openai", "responses", None),
    ("/openai/deployments/gpt4o-prod/chat/completions", "azure.ai.openai", "chat.completions", "gpt4o-prod"),
    ("/openai/deployments/d/audio/speech", "azure.ai.openai", "audio.speech", "d"),
    ("/v1/messages", "anthropic", "messages", None),
    ("/v1/threads/t1/messages", None, None, None),
    ("/v1beta/models/gemini-2.0-flash:generateContent", "gcp.gemini", "generateContent", "gemini-2.0-flash"),
    ("/v1beta/models/gemini-2.0-flash:streamGenerateContent", "gcp.gemini", "streamGenerateContent", "gemini-2.0-flash"),
    ("/v1beta/models/text-embedding-004:batchEmbedContents", "gcp.gemini", "batchEmbedContents", "text-embedding-004"),
    ("/v1/projects/p/locations/us-central1/publishers/google/models/gemini-1.5-pro:generateContent",
     "gcp.vertex_ai", "generateContent", "gemini-1.5-pro"),
    ("/model/anthropic.claude-3-haiku-20240307-v1:0/converse", "aws.bedrock", "converse", "anthropic.claude-3-haiku-20240307-v1:0"),
    ("/model/m/converse-stream", "aws.bedrock", "converse", "m"),
    ("/model/meta.llama3-1-70b-instruct-v1:0/invoke", "aws.bedrock", "invoke", "meta.llama3-1-70b-instruct-v1:0"),
    ("/model/amazon.nova-micro-v1:0/invoke-with-response-stream", "aws.bedrock", "invoke", "amazon.nova-micro-v1:0"),
    ("/api/chat", "ollama", "chat", None),
    ("/api/generate", "ollama", "generate", None),
    ("/api/embed", "ollama", "embeddings", None),
    ("/api/embeddings", "ollama", "embeddings", None),
    ("/v2/chat", "cohere", "chat", None),
    ("/v2/embed", "cohere", "embeddings", None),
    ("/v1/messages/count_tokens", "anthropic", "count_tokens", None),
    ("/v1/moderations", "openai", "moderations", None),
    ("/model/m/count-tokens", "aws.bedrock", "count_tokens", "m"),
    ("/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict",
     "gcp.vertex_ai", "streamRawPredict", "claude-sonnet-4@20250514"),
    ("/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict",
     "gcp.vertex_ai", "rawPredict", "claude-sonnet-4@20250514"),
    ("/v1beta/openai/chat/completions", "gcp.gemini", "chat.completions", None),
    ("/v1beta/openai/embeddings", "gcp.gemini", "embeddings", None),
    ("/v1beta1/projects/p/locations/global/publishers/google/models/gemini-embedding-2:embedContent",
     "gcp.vertex_ai", "embedContent", "gemini-embedding-2"),
    ("/models/chat/completions", "azure.ai.inference", "chat.completions", None),
    ("/models/embeddings", "azure.ai.inference", "embeddings", None),
    ("/openai/v1/chat/completions", "openai", "chat.completions", None),  # Groq's too: the host decides
    ("/api/v1/services/aigc/text-generation/generation", "alibaba.dashscope", "generation", None),
    ("/api/v1/services/aigc/multimodal-generation/generation", "alibaba.dashscope", "generation", None),
    ("/compatible-mode/v1/chat/completions", "openai", "chat.completions", None),
    ("/health", None, None, None),
]


# (host, headers, path, provider, operation): OpenAI's paths served by others, told apart by
# the host an outgoing call goes to, or by a header only that provider's clients send.
CLAIMS = [
    ("myres.openai.azure.com", {}, "/openai/v1/chat/completions", "azure.ai.openai", "chat.completions"),
    ("myres.openai.azure.com:443", {}, "/openai/v1/responses", "azure.ai.openai", "responses"),
    ("MyRes.OpenAI.Azure.com.", {}, "/openai/v1/embeddings", "azure.ai.openai", "embeddings"),
    ("myres.cognitiveservices.azure.com", {}, "/openai/v1/responses", "azure.ai.openai", "responses"),
    ("res.services.ai.azure.com", {}, "/api/projects/p/openai/v1/responses", "azure.ai.openai", "responses"),
    ("127.0.0.1:8000", {"api-key": "k"}, "/openai/v1/chat/completions", "azure.ai.openai", "chat.completions"),
    ("127.0.0.1:8000", {"api-key": "k"}, "/openai/responses", "azure.ai.openai", "responses"),
    ("127.0.0.1:8000", {"ocp-apim-subscription-key": "k"}, "/openai/v1/responses", "azure.ai.openai", "responses"),
    # api-key alone, off Azure's /openai/ prefix, says nothing
    ("127.0.0.1:8000", {"api-key": "k"}, "/v1/chat/completions", "openai", "chat.completions"),
    ("api.groq.com", {}, "/openai/v1/chat/completions", "openai", "chat.completions"),
    ("127.0.0.1:8000", {"authorization": "Bearer k"}, "/openai/v1/chat/completions", "openai", "chat.completions"),
    ("evil.openai.azure.com.example.org", {}, "/openai/v1/chat/completions", "openai", "chat.completions"),
    ("[::1]:8000", {}, "/openai/v1/chat/completions", "openai", "chat.completions"),
    # Bedrock serves OpenAI's API too: Bedrock's, never Azure's
    ("bedrock-runtime.us-west-2.amazonaws.com", {}, "/openai/v1/chat/completions", "aws.bedrock", "chat.completions"),
    ("bedrock-mantle.us-east-1.api.aws", {}, "/v1/responses", "aws.bedrock", "responses"),
    # ... but a gateway of one's own on AWS is not Bedrock
    ("abc123.execute-api.us-east-1.amazonaws.com", {}, "/v1/chat/completions", "openai", "chat.completions"),
    ("my-vllm-123.elb.us-east-1.amazonaws.com", {}, "/v1/chat/completions", "openai", "chat.completions"),
    ("bedrock-runtime.us-west-2.amazonaws.com.example.org", {}, "/openai/v1/chat/completions", "openai", "chat.completions"),
    # Azure AI Foundry Models: its own path, and serverless endpoints on OpenAI's
    ("res.services.ai.azure.com", {}, "/models/chat/completions", "azure.ai.inference", "chat.completions"),
    ("llama-xyz.eastus2.models.ai.azure.com", {}, "/chat/completions", "azure.ai.inference", "chat.completions"),
    ("models.inference.ai.azure.com", {}, "/chat/completions", "azure.ai.inference", "chat.completions"),
    ("a.b.openai.azure.com", {}, "/openai/v1/chat/completions", "openai", "chat.completions"),
    # a path another provider owns is never claimed
    ("myres.openai.azure.com", {}, "/v1/messages", "anthropic", "messages"),
]


@pytest.mark.parametrize("host,headers,path,provider,operation", CLAIMS, ids=[f"{c[0]}{c[2]}" for c in CLAIMS])
def test_claims_by_host_and_headers(host: str, headers: dict[str, str], path: str, provider: str, operation: str) -> None:
    sent = {"host": host, **headers}
    route = claimed(route_of(path), path, sent.get)
    assert (route.provider, route.operation) == (provider, operation)
    assert route.wire == (None if provider == route_of(path).provider else route_of(path).provider)


@pytest.mark.parametrize("path,provider,operation,model", ROUTES, ids=[r[0] for r in ROUTES])
def test_routes(path: str, provider: str | None, operation: str | None, model: str | None) -> None:
    route = route_of(path)
    assert (route.provider, route.operation, route.model) == (provider, operation, model)


def test_every_provider_is_routed_by_some_path() -> None:
    routed = {route_of(path).provider for path, *_ in ROUTES}
    assert {p.name for p in PROVIDERS} <= routed


def test_every_place_usage_or_a_model_sits_is_captured_by_the_scanner() -> None:
    # The scanner's paths are derived, so a provider's usage cannot be missed only on
    # bodies large enough to be scanned.
    for provider in PROVIDERS:
        for path in (*(where for where, _ in provider.usage), *provider.model_at):
            assert path in OBJECT_PATHS or not path, (provider.name, path)
        for where, shapes in provider.usage:
            if not where:
                for shape in shapes:
                    assert all((m,) in OBJECT_PATHS for m in shape.markers), provider.name
                    assert all(f in OBJECT_PATHS for f in shape.scanned), provider.name


@pytest.mark.parametrize("provider", PROVIDERS, ids=[p.name for p in PROVIDERS])
def test_scanned_objects_read_like_parsed_ones(provider: Provider) -> None:
    # An object of each container and shape, read from json.loads' dict and from the
    # scanner's sparse one, gives the same counts.
    samples = {
        "openai.chat": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "openai.responses": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        "anthropic": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 2},
        "aws.bedrock.converse": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        "cohere": {"tokens": {"input_tokens": 3, "output_tokens": 4}},
        "gemini": {"promptTokenCount": 3, "candidatesTokenCount": 4},
        "ollama": {"prompt_eval_count": 3, "eval_count": 4},
        "aws.bedrock.invocation_metrics": {"inputTokenCount": 3, "outputTokenCount": 4, "cacheReadInputTokenCount": 1},
        "aws.bedrock.titan": {"inputTextTokenCount": 3, "results": [{"tokenCount": 4, "outputText": "hi"}]},
        "aws.bedrock.llama": {"prompt_token_count": 3, "generation_token_count": 4},
    }
    for at, shapes in provider.usage:
        for shape in shapes:
            obj: dict = dict(samples[shape.name])
            for key in reversed(at):
                obj = {key: obj}
            obj = {"id": "x", "noise": [1, {"usage": None}], **obj}
            for model_at in provider.model_at:
                if len(model_at) == 1:
                    obj[model_at[0]] = "m"
            found: list[dict] = []
            JSONScanner(OBJECT_PATHS, found.append).feed(json.dumps(obj).encode())
            assert counts_from_object(found[0]) == counts_from_object(obj) is not None, (provider, at, shape.name)
            assert model_from_object(found[0]) == model_from_object(obj)


def test_derived_hints_match_every_streamed_text_field_and_usage_key() -> None:
    for provider in PROVIDERS:
        for field in provider.stream_text:
            m = facts.TEXT_FIELD.search(b'{"%s": "abc"}' % field.encode())
            assert m is not None and m.group(1) == b"abc", field
        if provider.stream_format != "sse":
            continue
        for at, _ in provider.usage:
            if at:
                assert facts.USAGE_HINT.search(b'{"%s" : {"x": 1}}' % at[-1].encode()), at
                assert not facts.USAGE_HINT.search(b'{"%s": null}' % at[-1].encode()), at
    assert facts.USAGE_MARKERS == (b'eval_count"',)  # prompt_eval_count" ends with it


def test_derived_lists() -> None:
    assert facts.KEY_HEADERS == ("Authorization", "api-key", "Ocp-Apim-Subscription-Key", "x-api-key", "x-goog-api-key")
    assert facts.KEY_QUERY == ("key",)
    assert {"anthropic", "gcp.gemini", "gcp.vertex_ai", "ollama", "cohere", "aws.bedrock", "alibaba.dashscope"} == facts.ALWAYS_REPORTS
    assert {
        "embeddings", "responses", "embedContent", "batchEmbedContents", "countTokens", "count_tokens", "moderations",
    } == facts.NO_TEXT_OPERATIONS
    assert {"countTokens", "count_tokens", "moderations"} == facts.UNBILLED_OPERATIONS
    assert facts.provider_from_headers({"anthropic-version": "2023-06-01"}, {}) == "anthropic"
    assert facts.provider_from_headers({"x-goog-api-key": "k"}, {}) == "gcp.gemini"
    assert facts.provider_from_headers({"api-key": "k"}, {"api-version": "2024-10-21"}) == "azure.ai.openai"
    assert facts.provider_from_headers({"api-key": "k"}, {}) is None
    assert facts.OTEL_OPERATION_NAMES["converse"] == "chat"
    assert facts.counts_from_headers({"x-amzn-bedrock-input-token-count": "5", "x-amzn-bedrock-output-token-count": "10"}) == (5, 10, None, None, None, None, None)
    assert facts.counts_from_headers({"x-amzn-bedrock-input-token-count": "5", "x-amzn-bedrock-output-token-count": "10",
                                      "x-amzn-bedrock-cache-read-input-token-count": "100"}) == (105, 10, None, 100, None, None, None)
    for bad in ("-1", "1e3", "x", "99999999999"):
        assert facts.counts_from_headers({"x-amzn-bedrock-input-token-count": bad, "x-amzn-bedrock-output-token-count": "1"}) is None
    assert facts.counts_from_headers({}) is None


@pytest.mark.parametrize("terminal,counted", [("response.incomplete", True), ("response.completed", True), ("response.failed", False)])
def test_responses_terminal_events(parse_path: str, terminal: str, counted: bool) -> None:
    # A failed response bills nothing even if its event carries usage; an incomplete one
    # (max_output_tokens reached) is billed like a completed one.
    response = {"id": "resp_1", "status": terminal.split(".")[1], "model": "gpt-5",
                "usage": {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}}
    event = {"type": terminal, "sequence_number": 9, "response": response}
    stream = b"event: " + terminal.encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
    for fmt, body in ((SSE, stream), (JSON, json.dumps(event).encode())):
        x = UsageExtractor(fmt)
        for i in range(len(body)):
            x.feed(body[i : i + 1])
        usage = x.close().usage
        assert (usage is not None and usage.total_tokens == 15) is counted, (fmt, terminal)


def test_hidden_output_in_a_total_is_counted_as_reasoning_only_where_the_table_says() -> None:
    # Gemini's OpenAI compatibility endpoint reports thoughts only in total_tokens; OpenAI's
    # own total is prompt + completion, and a gap there is not reinterpreted.
    from llm_metrics_middleware._core.usage import make_usage, with_hidden_output

    assert route_of("/v1beta/openai/chat/completions").hidden_output_in_total
    assert not route_of("/v1/chat/completions").hidden_output_in_total
    assert not route_of("/v1beta/models/gemini-2.5-pro:generateContent").hidden_output_in_total
    # Whether streams always carry usage is a fact of the row, not of the provider's name.
    assert route_of("/v1beta/models/gemini-2.5-pro:streamGenerateContent").streams_report_usage
    assert not route_of("/v1beta/openai/chat/completions").streams_report_usage
    assert route_of("/v1/messages").streams_report_usage and not route_of("/v1/chat/completions").streams_report_usage
    hidden = with_hidden_output(make_usage(35, 12, 109))
    assert (hidden.prompt_tokens, hidden.completion_tokens, hidden.total_tokens, hidden.reasoning_tokens) == (35, 74, 109, 62)
    reported = make_usage(10, 30, 40, reasoning=20)  # reasoning already inside completion
    assert with_hidden_output(reported) == reported
    estimated = make_usage(10, 5, 20, estimated=True)
    assert with_hidden_output(estimated) == estimated
