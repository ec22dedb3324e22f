"""Every README quickstart, run as written: FastAPI, Flask, Django (WSGI and ASGI), Quart and
Litestar, each in a server process of its own (uvicorn or gunicorn, as the snippet says),
with the README's recipe for the logged-in user where it has one.

The snippets are read out of README.md, so the README cannot drift from what works. Each
test adds one LLM route beside the snippet (the snippet leaves "your routes" to you),
sends a call, and checks the call is counted under the right user, that ``/metrics``
answers GET and refuses POST.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port, gunicorn_server, python_env, server_process

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
CHAT = {"model": "sim-gpt-1", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 3}


def section(heading: str) -> str:
    """The README text under ``heading`` (any level), up to the next heading of that level or above."""
    lines = README.splitlines(keepends=True)
    out: list[str] = []
    level = 0
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading_match = None if fenced else re.match(r"(#+) (.*)\n", line)
        if heading_match and level and len(heading_match.group(1)) <= level:
            break
        if level:
            out.append(line)
        elif heading_match and heading_match.group(2) == heading:
            level = len(heading_match.group(1))
    assert level, f"README has no heading {heading!r}"
    return "".join(out)


def python_blocks(heading: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(heading), re.S)


def block(heading: str, first_line_prefix: str) -> str:
    found = [b for b in python_blocks(heading) if b.startswith(first_line_prefix)]
    assert len(found) == 1, (heading, first_line_prefix, python_blocks(heading))
    return found[0]


SIMULATED = """
from llm_metrics_middleware.testing import SimulatedLLM

simulated = SimulatedLLM()


def answer(body: bytes):
    response = simulated.respond("POST", "/v1/chat/completions", body)
    return response.status, b"".join(response.chunks)
"""


@contextmanager
def uvicorn_app(tmp: Path, spec: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", spec, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    env = python_env(PYTHONPATH=f"{tmp}:{ROOT}", LLM_METRICS_SUBSCRIPTION_SECRET="test")
    with server_process(command, port=port, log_path=tmp / "uvicorn.log", env=env, cwd=tmp) as server:
        yield server.url


@contextmanager
def gunicorn_app(tmp: Path, spec: str) -> Iterator[str]:
    env = python_env(PYTHONPATH=f"{tmp}:{ROOT}", LLM_METRICS_SUBSCRIPTION_SECRET="test")
    with gunicorn_server(spec, workdir=tmp, env=env) as server:
        yield server.url


def check_counted(client: httpx.Client, user: str, **post: object) -> None:
    response = client.post("/v1/chat/completions", **post)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    counted = [line for line in metrics.text.splitlines()
               if line.startswith("llm_completion_tokens_total{") and not line.endswith(" 0.0")]
    assert len(counted) == 1, metrics.text
    assert f'user_id="{user}"' in counted[0] and counted[0].endswith(" 3.0"), counted
    assert client.post("/metrics").status_code == 405


def test_fastapi_quickstart_and_user_recipe(tmp_path: Path) -> None:
    main = block("FastAPI / Starlette", "# main.py")
    recipe = block("The logged-in user as `User ID`", "# FastAPI")
    (tmp_path / "main.py").write_text(main + "\n" + recipe)
    (tmp_path / "served.py").write_text(SIMULATED + textwrap.dedent("""
        from fastapi import Depends, Request, Response

        from main import app, current_user


        @app.post("/v1/chat/completions")
        async def chat(request: Request, user: str = Depends(current_user)) -> Response:
            status, body = answer(await request.body())
            return Response(body, status_code=status, media_type="application/json")
    """))
    with uvicorn_app(tmp_path, "served:app") as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 401  # the recipe's auth
        # The authenticated user wins over the body's forgeable `user`.
        check_counted(client, "ada", json={**CHAT, "user": "mallory"}, auth=("ada", "lovelace"))


def test_flask_quickstart_and_user_recipe(tmp_path: Path) -> None:
    main = block("Flask", "# main.py")
    recipe = block("The logged-in user as `User ID`", "# Flask")
    (tmp_path / "main.py").write_text(main + "\n" + recipe)
    (tmp_path / "served.py").write_text(SIMULATED + textwrap.dedent("""
        from flask import Response, request

        from main import app


        @app.post("/v1/chat/completions")
        def chat() -> Response:
            status, body = answer(request.get_data())
            return Response(body, status=status, content_type="application/json")
    """))
    with gunicorn_app(tmp_path, "served:app") as url, httpx.Client(base_url=url, timeout=10) as client:
        check_counted(client, "ada", json={**CHAT, "user": "mallory"}, auth=("ada", "lovelace"))


def test_quart_quickstart(tmp_path: Path) -> None:
    pytest.importorskip("quart")
    (tmp_path / "main.py").write_text(block("Quart", "# main.py"))
    (tmp_path / "served.py").write_text(SIMULATED + textwrap.dedent("""
        from quart import Response, request

        from main import app


        @app.post("/v1/chat/completions")
        async def chat() -> Response:
            status, body = answer(await request.get_data())
            return Response(body, status=status, content_type="application/json")
    """))
    with uvicorn_app(tmp_path, "served:app") as url, httpx.Client(base_url=url, timeout=10) as client:
        check_counted(client, "ada", json={**CHAT, "user": "ada"})


def test_litestar_quickstart(tmp_path: Path) -> None:
    pytest.importorskip("litestar")
    (tmp_path / "main.py").write_text(block("Litestar", "# main.py"))
    (tmp_path / "served.py").write_text(SIMULATED + textwrap.dedent("""
        from litestar import Request, Response, post

        from main import api, app


        @post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            status, body = answer(await request.body())
            return Response(body, status_code=status, media_type="application/json")


        api.register(chat)
    """))
    with uvicorn_app(tmp_path, "served:app") as url, httpx.Client(base_url=url, timeout=10) as client:
        check_counted(client, "ada", json={**CHAT, "user": "ada"})


DJANGO_SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "mysite.llm_user.llm_metrics_user",
]
ROOT_URLCONF = "mysite.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True
"""

DJANGO_URLS = SIMULATED + """
from django.contrib.auth import authenticate, login
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def sign_in(request):
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return HttpResponse(status=401)
    login(request, user)
    return HttpResponse("signed in")


@csrf_exempt
def chat(request):
    status, body = answer(request.body)
    return HttpResponse(body, status=status, content_type="application/json")


urlpatterns = [path("login", sign_in), path("v1/chat/completions", chat)]
"""


@pytest.fixture(scope="module")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A startproject-shaped project whose wsgi.py, asgi.py and llm_user.py are the README's."""
    pytest.importorskip("django")
    root = tmp_path_factory.mktemp("django")
    package = root / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(DJANGO_SETTINGS)
    (package / "urls.py").write_text(DJANGO_URLS)
    (package / "wsgi.py").write_text(block("Django", "# mysite/wsgi.py"))
    (package / "asgi.py").write_text(block("Django", "# mysite/asgi.py"))
    (package / "llm_user.py").write_text(block("The logged-in user as `User ID`", "# Django"))
    env = python_env(PYTHONPATH=f"{root}:{ROOT}", DJANGO_SETTINGS_MODULE="mysite.settings")
    import subprocess

    for code in ("import django; from django.core.management import call_command; django.setup(); "
                 "call_command('migrate', verbosity=0)",
                 "import django; django.setup(); from django.contrib.auth.models import User; "
                 "User.objects.create_user('ada', password='lovelace')"):
        done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("served", ["wsgi", "asgi"])
def test_django_quickstart_and_user_recipe(served: str, django_project: Path, tmp_path: Path) -> None:
    run = (gunicorn_app(django_project, "mysite.wsgi") if served == "wsgi"
           else uvicorn_app(django_project, "mysite.asgi:application"))
    with run as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/login", data={"username": "ada", "password": "lovelace"}).status_code == 200
        check_counted(client, "ada", json={**CHAT, "user": "mallory"})
