"""The dispatcher's admin token: 401 without one, 403 for a wrong one, compared in constant time, and
never written anywhere: not in the dispatcher's log (at -vv), its answers or its metrics."""

from __future__ import annotations

import hmac
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infadapter.errors import BadInput
from infadapter.ports import free_port
from infadapter.serving import dispatcher as dispatcher_module
from infadapter.serving.dispatcher import DispatcherClient
from tests.test_dispatcher_support import TOKEN, Cluster, http, predict

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-" + "x7" * 16  # distinctive, so a leak anywhere is found by a plain search


def test_the_token_is_compared_with_hmac_compare_digest(cluster: Cluster, monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(dispatcher_module.hmac, "compare_digest", spy)
    _, base = cluster.dispatcher([cluster.backend("a").spec()])
    assert http("GET", f"{base}/admin/backends", token="guess").status == 403
    assert http("GET", f"{base}/admin/backends", token=TOKEN).status == 200
    assert calls == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        (b"Basic dXNlcjpwYXNz", 401),  # another scheme
        (b"Bearer", 401),  # a scheme without a token
        (b"Bearer \xff\xfe", 403),  # not UTF-8: a wrong token, not a crash
        (b"Bearer " + TOKEN.encode() + b"x", 403),
        (b"bearer " + TOKEN.encode(), 200),  # the scheme is case-insensitive (RFC 7235)
    ],
)
def test_missing_is_401_and_wrong_is_403(cluster: Cluster, header: bytes | None, status: int) -> None:
    _, base = cluster.dispatcher([cluster.backend("a").spec()])
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        auth = b"Authorization: " + header + b"\r\n" if header is not None else b""
        sock.sendall(b"GET /admin/stats HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    if status != 200:
        assert b'{"error": "admin token' in answer
        assert TOKEN.encode() not in answer


def test_the_client_reports_a_refused_token_as_one_line(cluster: Cluster) -> None:
    _, base = cluster.dispatcher([cluster.backend("a").spec()])
    with pytest.raises(BadInput, match="admin token rejected"):
        DispatcherClient(base, "wrong").stats()
    assert "wrong" not in repr(DispatcherClient(base, "wrong").__dict__.get("token", ""))


@pytest.mark.slow
def test_the_token_is_never_logged_or_echoed(tmp_path: Path) -> None:
    backends = Cluster()
    token_file = tmp_path / "admin.token"
    token_file.write_text(SECRET + "\n")
    token_file.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "-vv", "dispatch", "--port", str(port), "--admin-token-file",
         str(token_file), "--backend", f"a={backends.backend('a').url}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base)
        answers = [
            http("GET", f"{base}/admin/backends", token=SECRET),
            http("GET", f"{base}/admin/stats", token=SECRET),
            http("PUT", f"{base}/admin/backends", {"backends": [{"name": "a", "url": "http://127.0.0.1:9",
                                                                 "weight": 1}]}, token=SECRET),
            http("GET", f"{base}/admin/stats", token=SECRET[:-1]),  # a near miss
            http("GET", f"{base}/admin/stats", token=SECRET + "x"),
            http("GET", f"{base}/metrics"),
            http("GET", f"{base}/healthz"),
            predict(base),
        ]  # fmt: skip
        assert [a.status for a in answers[:5]] == [200, 200, 200, 403, 403]
        for a in answers:
            assert SECRET not in str(a.body) and SECRET not in str(a.headers)
            assert SECRET[:-1] not in str(a.body)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        backends.close()
    assert proc.returncode == 0, err
    assert "dispatcher listening" in err  # the log is there, at -vv ...
    assert SECRET not in out + err and SECRET[:8] not in out + err  # ... and holds no part of the token


def test_a_generated_token_file_is_private(tmp_path: Path) -> None:
    token, written = dispatcher_module.resolve_admin_token(tmp_path / "t" / "admin.token", 8500, env={})
    assert written is not None and written.read_text().strip() == token and len(token) >= 32
    assert os.stat(written).st_mode & 0o777 == 0o600


def _wait_healthy(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{base}/healthz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("dispatcher did not answer /healthz")
