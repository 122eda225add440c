"""The azd postdeploy check (scripts/hooks/check-deployed-auth), run for real with curl against a
local stand-in for the deployed app; only `az`, which needs an Azure sign-in, is a stub."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "scripts" / "hooks" / "check-deployed-auth"
KEY = "function-key-that-must-not-be-printed"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class App:
    """A stand-in for the deployed Function app: ``mode`` says what protects it."""

    def __init__(self) -> None:
        self.mode = "authentication"
        self.calls: list[dict[str, str]] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                app.calls.append({"path": self.path, **headers})
                self.send_response(app.answer(headers))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, headers: dict[str, str]) -> int:
        if headers.get("x-functions-key") != KEY:
            return 401  # the Functions host: no key, no call
        if self.mode == "authentication":
            return 401  # App Service authentication: no token, no call, whatever the headers
        # no authentication in front: the app itself refuses a call without a principal, but a
        # forged one with the right tenant and audience gets through
        return 200 if "x-ms-client-principal" in headers else 401


@pytest.fixture
def app() -> Iterator[App]:
    served = App()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()


def run_hook(
    tmp_path: Path, app: App, *, enabled: str = "true"
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/az-calls"\necho {KEY}\n')
    az.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AZURE_GATE_AUTH_ENABLED": enabled,
        "AZURE_FUNCTION_URL": app.url,
        "AZURE_RESOURCE_GROUP": "rg-gate",
        "AZURE_FUNCTION_APP_NAME": "func-gate",
        "AZURE_TENANT_ID": TENANT,
        "AZURE_GATE_AUTH_RESOURCE": "api://gate",
    }
    return subprocess.run(
        [str(HOOK)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_deployment_behind_authentication_passes_the_check(tmp_path: Path, app: App) -> None:
    result = run_hook(tmp_path, app)

    assert result.returncode == 0, result.stderr
    assert [call["path"] for call in app.calls] == ["/api/gates", "/api/gates"]
    assert "rg-gate" in (tmp_path / "az-calls").read_text()


def test_a_deployment_that_lets_a_forged_principal_through_fails_the_check(
    tmp_path: Path, app: App
) -> None:
    app.mode = "no authentication"

    result = run_hook(tmp_path, app)

    assert result.returncode == 1
    assert "answered 200, not 401, to a call with a forged client-principal header" in result.stderr
    forged = json.loads(base64.b64decode(app.calls[-1]["x-ms-client-principal"]))
    # the forgery is a good one: the gate's own tenant and audience, a role, no token
    claims = {c["typ"]: c["val"] for c in forged["claims"]}
    assert (forged["auth_typ"], claims["tid"], claims["aud"]) == ("aad", TENANT, "api://gate")


def test_the_function_key_goes_only_to_the_app_and_is_never_printed(
    tmp_path: Path, app: App
) -> None:
    app.mode = "no authentication"

    result = run_hook(tmp_path, app)

    assert KEY not in result.stdout + result.stderr
    assert all(call["x-functions-key"] == KEY for call in app.calls)


def test_without_authentication_configured_the_check_calls_nothing(
    tmp_path: Path, app: App
) -> None:
    result = run_hook(tmp_path, app, enabled="false")

    assert result.returncode == 0 and app.calls == []
    assert not (tmp_path / "az-calls").exists()


def test_the_postdeploy_hook_runs_the_check_on_both_shells() -> None:
    import yaml

    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))["hooks"]

    assert "scripts/hooks/check-deployed-auth" in hooks["postdeploy"]["posix"]["run"]
    assert "./scripts/hooks/check-deployed-auth.ps1" in hooks["postdeploy"]["windows"]["run"]
    assert (ROOT / "scripts" / "hooks" / "check-deployed-auth.ps1").is_file()
