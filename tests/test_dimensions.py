from __future__ import annotations

import pytest

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, LLMMetricsWSGIMiddleware
from llm_metrics_middleware._metering.dimensions import DEFAULT_NAMES, build_schema, label_name
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, request_json, run_asgi, run_wsgi, wsgi_chunk_app

BODY = b'{"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'


def test_label_names() -> None:
    assert [label_name(n) for n in DEFAULT_NAMES] == [
        "api_id", "operation_id", "product_id", "user_id", "subscription_id", "location", "gateway_id",
    ]
    assert label_name("tier") == "tier" and label_name("Cost Center") == "cost_center" and label_name("9x") == "_9x"


def test_eleventh_custom_dimension_is_refused_naming_the_limit() -> None:
    ten = [Dimension(f"c{i}", "v") for i in range(10)]
    build_schema("llm", [*DEFAULT_NAMES, *ten])
    with pytest.raises(ValueError, match="at most 10 custom dimensions"):
        build_schema("llm", [*ten, Dimension("c10", "v")])
    with pytest.raises(ValueError, match="at most 10 custom dimensions"):
        LLMMetricsMiddleware(chunk_app(200, [], []), exporters=[InMemoryExporter()], dimensions=[*ten, Dimension("x", "y")])


def test_custom_without_value_and_bad_values() -> None:
    with pytest.raises(ValueError, match="needs a value"):
        build_schema("llm", ["tier"])
    with pytest.raises(ValueError, match="needs a value"):
        build_schema("llm", [Dimension("tier")])
    with pytest.raises(TypeError, match="must be None, a str or a callable"):
        build_schema("llm", [Dimension("tier", 3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both become label"):
        build_schema("llm", [Dimension("a b", "1"), Dimension("a-b", "2")])
    with pytest.raises(TypeError, match="takes a list"):
        build_schema("llm", "User ID")


def _dims(headers: list[tuple[str, str]], body: bytes, path: str = "/v1/chat/completions", query: str = "", **options: object) -> dict[str, str]:
    exporter = InMemoryExporter()
    options.setdefault("dimensions", [*DEFAULT_NAMES, "Model", "Provider"])
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [BODY]), exporters=[exporter], subscription_secret="s", **options)  # type: ignore[arg-type]
    run_asgi(app, path=path, body=body, headers=[("content-type", "application/json"), *headers], query=query)
    wsgi_exporter = InMemoryExporter()
    wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", [("Content-Type", "application/json")], [BODY]), exporters=[wsgi_exporter], subscription_secret="s", **options)  # type: ignore[arg-type]
    run_wsgi(wsgi, path=path, body=body, headers=[("content-type", "application/json"), *headers], query=query)
    asgi_dims, wsgi_dims = exporter.dimensions(exporter.calls[0]), wsgi_exporter.dimensions(wsgi_exporter.calls[0])
    assert asgi_dims == wsgi_dims  # both adapters see the same request the same way
    return asgi_dims


def test_default_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_LOCATION", "westeurope")
    dims = _dims([("x-product-id", "starter"), ("api-key", "k1")], request_json(model="gpt-4o", user="alice"),
                 path="/openai/deployments/prod-4o/chat/completions", query="api-version=2024-10-21", gateway_id="gw-1")
    assert dims["API ID"] == "/openai"
    assert dims["Operation ID"] == "chat.completions"
    assert dims["Product ID"] == "starter"
    assert dims["User ID"] == "alice"
    assert len(dims["Subscription ID"]) == 16 and dims["Subscription ID"] != "k1"
    assert dims["Location"] == "westeurope"
    assert dims["Gateway ID"] == "gw-1"
    assert dims["Model"] == "gpt-4o-2024-08-06"
    assert dims["Provider"] == "azure.ai.openai"


def test_user_id_fallbacks_and_unknown() -> None:
    assert _dims([], request_json(model="c", metadata={"user_id": "bob"}), path="/v1/messages")["User ID"] == "bob"
    assert _dims([("x-user-id", "carol")], request_json(model="c"))["User ID"] == "carol"
    dims = _dims([], b"")
    assert dims["User ID"] == "unknown" and dims["Product ID"] == "unknown" and dims["Subscription ID"] == "unknown"


def test_same_key_same_subscription_id_any_header() -> None:
    a = _dims([("authorization", "Bearer sk-1")], b"")["Subscription ID"]
    b = _dims([("x-api-key", "sk-1")], b"")["Subscription ID"]
    c = _dims([("x-api-key", "sk-2")], b"")["Subscription ID"]
    assert a == b != c


def test_callable_and_fixed_values_and_failing_callable() -> None:
    dims = _dims([("x-team", "search")], b"", dimensions=[
        Dimension("team", lambda r: r.headers.get("X-Team")),
        Dimension("tier", "gold"),
        Dimension("method", lambda r: r.method + " " + r.path),
        Dimension("boom", lambda r: 1 / 0),  # type: ignore[arg-type, operator]
        Dimension("User ID", lambda r: "from-callable"),
    ])
    assert dims == {"team": "search", "tier": "gold", "method": "POST /v1/chat/completions", "boom": "unknown", "User ID": "from-callable"}


def test_api_id_under_a_mount_asgi_and_wsgi() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    exporter = InMemoryExporter()
    inner = LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [BODY]), exporters=[exporter], dimensions=["API ID"])
    outer = Starlette(routes=[Mount("/llm", app=inner)])
    run_asgi(outer, path="/llm/v1/chat/completions", body=request_json(model="m"))
    assert exporter.dimensions(exporter.calls[0]) == {"API ID": "/llm/v1"}
    wsgi_exporter = InMemoryExporter()
    wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", [("Content-Type", "application/json")], [BODY]), exporters=[wsgi_exporter], dimensions=["API ID"])

    def mounted(environ: dict, start_response: object) -> object:
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/llm", environ["PATH_INFO"][len("/llm"):]
        return wsgi(environ, start_response)  # type: ignore[arg-type]

    run_wsgi(mounted, path="/llm/v1/chat/completions", body=request_json(model="m"))
    assert wsgi_exporter.dimensions(wsgi_exporter.calls[0]) == {"API ID": "/llm/v1"}


def test_values_seen_clean_are_kept_and_others_still_sanitised() -> None:
    """schema.values remembers strings that needed no sanitising (_CLEAN); that must never
    let a value through that needs it, on the first call or any later one."""
    from llm_metrics_middleware._metering import dimensions
    from llm_metrics_middleware._metering.request import RequestView

    values = iter(["gpt-4o", "gpt-4o", "gpt\x00-4o", "x" * 300, "", "gpt-4o"])
    schema = build_schema("llm", [Dimension("m", lambda r: next(values))])
    view = RequestView("POST", "/v1/chat/completions", "", "")
    ctx = dimensions.CallContext()
    got = [schema.values(view, ctx)[0] for _ in range(6)]
    assert got[:2] == ["gpt-4o", "gpt-4o"] and got[5] == "gpt-4o"
    assert got[2] == "gpt-4o"  # the control character removed, as sanitize does
    assert got[3] == dimensions.sanitize("x" * 300) and len(got[3]) == dimensions.MAX_VALUE_LENGTH
    assert got[4] == "unknown"
    assert "gpt-4o" in dimensions._CLEAN and "gpt\x00-4o" not in dimensions._CLEAN and "x" * 300 not in dimensions._CLEAN


def test_compiled_values_are_each_source_sanitised() -> None:
    """schema.values is written per schema (built-ins that read only the call context
    inline); it must give what calling each dimension's own source and sanitising gives,
    and a source that raises gives "unknown" and is counted."""
    from llm_metrics_middleware._metering import dimensions
    from llm_metrics_middleware._metering.request import RequestView

    def broken(request: object) -> str:
        raise RuntimeError("boom")

    schema = build_schema(
        "llm",
        [*dimensions.DEFAULT_NAMES, "Model", "Provider", Dimension("tier", "gold"),
         Dimension("team", lambda r: r.headers.get("x-team")), Dimension("bad", broken)],
        location="eu\x00west", gateway_id="gw",
    )
    assert [d.inline for d in schema.dimensions if d.inline] == ["ctx.operation or request.path", "ctx.model", "ctx.provider"]
    view = RequestView.from_scope({  # type: ignore[arg-type]
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"", "root_path": "",
        "headers": [(b"x-team", b"t" * 300), (b"x-user-id", b"u\x01"), (b"authorization", b"Bearer k")],
    })
    for ctx in (dimensions.CallContext("openai", "chat.completions", "gpt-4o"), dimensions.CallContext()):
        errors: list[str] = []
        got = schema.values(view, ctx, errors.append)
        expected = []
        for dim in schema.dimensions:
            try:
                value = dim.source(view, ctx)
            except RuntimeError:
                value = None
            expected.append(dimensions.sanitize(value))
        assert got == tuple(expected) and got[-1] == "unknown" and got[-3] == "gold"
        assert got[1] == (ctx.operation or view.path) and got[7] == dimensions.sanitize(ctx.model)
        assert errors == ["dimension"]
