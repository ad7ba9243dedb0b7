"""``recp grafana push`` against a local HTTP server that records what grafana-client sends.

No Grafana server can be installed here, so a small ``http.server`` in a thread plays one:
it answers the folder and dashboard endpoints the way Grafana's HTTP API does and records
every request (method, path, Authorization header, JSON body).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from collector import cli
from detectors import dashboards as dash

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN = "glsa_test-token_0123456789"


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class FakeGrafana:
    """What the server answers: ``mode`` is ok, unauthorized or forbidden."""

    mode: str = "ok"
    prefix: str = ""  # where a reverse proxy puts Grafana, e.g. /grafana
    folders: set[str] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def answer(self, req: Request) -> tuple[int, Any]:
        if not req.path.startswith(self.prefix + "/api/"):
            return 404, {"message": "Not found"}
        req.path = req.path[len(self.prefix):]
        if self.mode == "unauthorized" or req.authorization != f"Bearer {TOKEN}":
            return 401, {"message": "invalid API key", "traceID": ""}
        if self.mode == "forbidden":
            return 403, {"message": "Access denied", "accessErrorId": "ACE0"}
        if req.method == "GET" and req.path.startswith("/api/folders/"):
            uid = req.path.rsplit("/", 1)[1]
            if uid in self.folders:
                return 200, {"uid": uid, "title": "RECP", "id": 7}
            return 404, {"message": "folder not found", "status": "not-found"}
        if req.method == "POST" and req.path == "/api/folders":
            self.folders.add(req.body["uid"])
            return 200, {"uid": req.body["uid"], "title": req.body["title"], "id": 7}
        if req.method == "POST" and req.path == "/api/dashboards/db":
            d = req.body["dashboard"]
            if req.body.get("folderUid") not in self.folders:
                return 400, {"message": "folder not found"}
            return 200, {"id": 1, "uid": d["uid"], "url": f"/d/{d['uid']}/x",
                         "status": "success", "version": 1, "slug": "x"}
        return 404, {"message": "Not found"}


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            req = Request(self.command, self.path, self.headers.get("Authorization"),
                          json.loads(raw) if raw else None)
            fake.requests.append(req)
            status, body = fake.answer(req)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-grafana", daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "grafana.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_push_creates_the_folder_and_uploads_every_dashboard(
    grafana: FakeGrafana, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["grafana", "push", "--url", grafana.url, "--token-file", str(token_file)])
    out = capsys.readouterr()
    assert code == 0, out.err
    calls = [(r.method, r.path) for r in grafana.requests]
    n = len(dash.dashboards())
    assert calls == [("GET", "/api/folders/recp"), ("POST", "/api/folders")] + [
        ("POST", "/api/dashboards/db")] * n
    assert all(r.authorization == f"Bearer {TOKEN}" for r in grafana.requests)
    assert grafana.requests[1].body == {"title": "RECP", "uid": "recp"}
    pushed = {r.body["dashboard"]["uid"]: r.body for r in grafana.requests[2:]}
    generated = {b["uid"]: b for b in dash.dashboards().values()}
    assert sorted(pushed) == sorted(generated)
    for uid, body in pushed.items():
        assert body["dashboard"] == generated[uid]  # exactly the provisioned JSON
        assert body["overwrite"] is True and body["folderUid"] == "recp"
    assert "created folder" in out.out and out.out.count("pushed ") == n
    assert f"{grafana.url}/d/recp-losses/x" in out.out


def test_push_again_keeps_the_folder_and_rewrites_the_datasource(
    grafana: FakeGrafana, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana.folders.add("energy")
    code = cli.main(["grafana", "push", "--url", grafana.url + "/", "--token-file",
                     str(token_file), "--folder-uid", "energy", "--datasource-uid", "P95"])
    assert code == 0, capsys.readouterr().err
    assert [(r.method, r.path) for r in grafana.requests][:2] == [
        ("GET", "/api/folders/energy"), ("POST", "/api/dashboards/db")]
    for r in grafana.requests[1:]:
        text = json.dumps(r.body["dashboard"])
        assert '"uid": "P95"' in text and dash.DATASOURCE_UID not in text
        assert r.body["folderUid"] == "energy"


@pytest.mark.parametrize("suffix", ["/grafana", "/grafana/"])
def test_push_under_a_path_prefix(suffix: str, grafana: FakeGrafana, token_file: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    grafana.prefix = "/grafana"  # behind a reverse proxy at https://host/grafana/
    code = cli.main(["grafana", "push", "--url", grafana.url + suffix,
                     "--token-file", str(token_file)])
    assert code == 0, capsys.readouterr().err
    assert grafana.requests[0].path == "/api/folders/recp"  # as seen below the prefix
    assert len(grafana.requests) == 2 + len(dash.dashboards())


def test_refused_token_is_a_clear_message_not_a_traceback(
    grafana: FakeGrafana, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.token"
    bad.write_text("glsa_wrong\n")
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "grafana", "push", "--url", grafana.url,
         "--token-file", str(bad)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "refused the token (401 Unauthorized)" in proc.stderr
    assert grafana.requests[0].authorization == "Bearer glsa_wrong"
    assert len(grafana.requests) == 1  # stopped at the first refusal


def test_forbidden_says_which_role_is_missing(
    grafana: FakeGrafana, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana.mode = "forbidden"
    assert cli.main(["grafana", "push", "--url", grafana.url,
                     "--token-file", str(token_file)]) == 1
    err = capsys.readouterr().err
    assert "Access denied" in err and "Editor role" in err


def test_unreachable_server(token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert cli.main(["grafana", "push", "--url", url, "--token-file", str(token_file),
                     "--timeout", "2"]) == 1
    assert f"cannot reach Grafana at {url}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--token-file", "/nonexistent/token"], "cannot read token file"),
    (["--url", "ftp://x"], "expected http(s)://"),
    (["--url", "http://admin:admin@x"], "no credentials in --url"),
])
def test_usage_errors(argv: list[str], message: str, token_file: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    args = {"--url": "http://127.0.0.1:9", "--token-file": str(token_file)}
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        args[k] = v
    flat = [x for kv in args.items() for x in kv]
    assert cli.main(["grafana", "push", *flat]) == 2
    assert message in capsys.readouterr().err


def test_token_from_environment(grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert cli.main(["grafana", "push", "--url", grafana.url]) == 0
    monkeypatch.delenv("GRAFANA_TOKEN")
    assert cli.main(["grafana", "push", "--url", grafana.url]) == 2


def test_without_grafana_client_names_the_extra(
    token_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "grafana_client", None)  # as if not installed
    assert cli.main(["grafana", "push", "--url", "http://127.0.0.1:9",
                     "--token-file", str(token_file)]) == 3
    assert "pip install 'recp-monitor[analytics]'" in capsys.readouterr().err
    # export needs nothing beyond the standard library
    assert cli.main(["grafana", "export", str(token_file.parent / "out")]) == 0
