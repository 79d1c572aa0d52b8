"""Hostile input on the predict path: a real ONNX model server, and the dispatcher in front of it.

Every case is sent to both (the dispatcher forwards bodies unparsed, so the model server's 400 comes
back through it unchanged) and must get a TF-Serving-style JSON error with a 4xx code (413 over the
body limit), after which the next good request is still answered. Half-sent requests hold only
their own connection: with more of them open than the server has queue slots (and the dispatcher
in-flight slots), good requests are answered, and each slow client gets a 408 at its deadline; a
client that never finishes its request head (slowloris) gets a 408 at the head deadline and its
connection closed, so hundreds of them cannot exhaust either server's file descriptors.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infadapter.serving.dispatcher import BackendSpec
from infadapter.serving.images import make_jpeg, make_jpeg_b64
from infadapter.serving.resnet import write_model
from tests.test_dispatcher_support import Cluster
from tests.test_server import Server

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

RES = 64
SERVER_BODY_LIMIT = 1 << 20  # 1 MiB: small limits keep the "enormous" cases cheap on 2 cores
DISPATCHER_BODY_LIMIT = 2 << 20
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 2.0
HEADER_PHASE_CLIENTS = 200
MAX_QUEUE = 4  # server queue slots, and the dispatcher's in-flight bound: fewer than the slow clients
SLOW_CLIENTS = 6
PUBLIC = "resnet"


@dataclass
class Stack:
    server: Server
    dispatcher: str  # base URL
    cluster: Cluster

    def url(self, target: str) -> tuple[str, int, str]:
        """(host, port, predict path) of the target: the model server itself or the dispatcher."""
        if target == "server":
            return "127.0.0.1", self.server.port, "/v1/models/resnet18:predict"
        port = int(self.dispatcher.rsplit(":", 1)[1])
        return "127.0.0.1", port, f"/v1/models/{PUBLIC}:predict"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    models: Path = tmp_path_factory.mktemp("models")
    write_model(models, "resnet18", RES, seed=0)
    srv = Server(
        models, "resnet18",
        "--max-queue", str(MAX_QUEUE), "--max-batch", "8",
        "--max-body-bytes", str(SERVER_BODY_LIMIT), "--body-timeout", str(BODY_TIMEOUT_S),
        "--header-timeout", str(HEADER_TIMEOUT_S),
        warmup=1,
    )  # fmt: skip
    cluster = Cluster()
    try:
        srv.wait_available()
        _, base = cluster.dispatcher(
            [BackendSpec("resnet18", srv.base, "resnet18", 1.0)],
            max_body_bytes=DISPATCHER_BODY_LIMIT,
            body_timeout_s=BODY_TIMEOUT_S,
            header_timeout_s=HEADER_TIMEOUT_S,
            max_in_flight=MAX_QUEUE,
            model_name=PUBLIC,
            backend_timeout_s=30.0,
        )
        yield Stack(srv, base, cluster)
    finally:
        cluster.close()
        srv.stop()


def send(
    target: tuple[str, int, str],
    body: bytes | None,
    method: str = "POST",
    path: str | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, dict]:
    """One request with http.client (raw bytes, any method); the answer must be a JSON object."""
    host, port, default_path = target
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if chunked and body is not None:
            step = 64 * 1024
            conn.request(method, path or default_path, (body[i : i + step] for i in range(0, len(body), step)),
                         hdrs, encode_chunked=True)  # fmt: skip
        else:
            conn.request(method, path or default_path, body, hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return resp.status, json.loads(raw)
    finally:
        conn.close()


GOOD = json.dumps({"instances": [{"b64": make_jpeg_b64(96, 96, 1)}]}).encode()


def assert_still_serving(target: tuple[str, int, str]) -> None:
    status, body = send(target, GOOD)
    assert status == 200, body
    assert len(body["predictions"][0]["classes"]) == 5


def _numeric_instance(poison: str | None = None) -> bytes:
    """A [3, R, R] zero instance as JSON text; ``poison`` replaces its first number."""
    text = json.dumps({"instances": [[[[0] * RES] * RES] * 3]})
    return (text.replace("0", poison, 1) if poison else text).encode()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb as far as its header goes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _b64(data: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()


# (case id, body, expected status, a phrase of the error message)
BAD_BODIES = [
    ("truncated", b'{"instances": [{"b64": "AAAA"', 400, "not valid JSON"),
    ("malformed", b"{instances: 1}", 400, "not valid JSON"),
    ("empty", b"", 400, "not valid JSON"),
    ("not-utf8", b"\xff\xfe\x00{", 400, "not valid JSON"),
    ("nested-100k", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("nested-instance", b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    ("not-an-object", b"[1, 2]", 400, "JSON object"),
    ("no-instances", b'{"signature_name": ""}', 400, 'missing "instances"'),
    ("both-formats", b'{"instances": [[0]], "inputs": [[0]]}', 400, "send one"),
    ("unknown-field", b'{"instances": [[0]], "evil": 1}', 400, "unknown field"),
    ("unknown-signature", b'{"signature_name": "train", "instances": [[0]]}', 400, "not found in signature def"),
    ("signature-not-string", b'{"signature_name": {"a": 1}, "instances": [[0]]}', 400, "signature_name"),
    ("NaN", b'{"instances": [NaN]}', 400, "NaN is not a valid JSON number"),
    ("Infinity", _numeric_instance("Infinity"), 400, "Infinity is not a valid JSON number"),
    ("-Infinity", _numeric_instance("-Infinity"), 400, "-Infinity is not a valid JSON number"),
    ("overflow-to-inf", _numeric_instance("1e999"), 400, "must be finite"),
    ("float32-overflow", _numeric_instance("1e300"), 400, "must be finite"),
    ("huge-integer", _numeric_instance("9" * 400), 400, "numeric array expected"),
    ("string-numbers", _numeric_instance('"0"'), 400, "numeric array expected"),
    # (a lone boolean among numbers is read as 0/1, as numpy does; an array of booleans is refused)
    ("booleans", json.dumps({"instances": [[[[True] * RES] * RES] * 3]}).encode(), 400, "numeric array expected"),
    ("null-instance", b'{"instances": [null]}', 400, "got NoneType"),
    ("scalar-instance", b'{"instances": [7]}', 400, "got int"),
    ("wrong-shape", b'{"instances": [[1, 2, 3]]}', 400, f"must have shape [3, {RES}, {RES}]"),
    ("ragged", b'{"instances": [[[1, 2], [3]]]}', 400, "numeric array"),
    ("empty-instances", b'{"instances": []}', 400, "non-empty list"),
    ("instances-not-list", b'{"instances": {"b64": "AAAA"}}', 400, "non-empty list"),
    ("too-many-instances", json.dumps({"instances": [[0]] * 9}).encode(), 400, "at most 8"),
    ("inputs-null", b'{"inputs": null}', 400, '"inputs" must be'),
    ("bad-base64", b'{"instances": [{"b64": "not base64!"}]}', 400, "not valid base64"),
    ("b64-not-string", b'{"instances": [{"b64": 12}]}', 400, "must be a base64 string"),
    ("b64-extra-key", b'{"instances": [{"b64": "AAAA", "x": 1}]}', 400, "got keys"),
    ("named-input-nested", b'{"instances": [{"input": {"input": [0]}}]}', 400, "input"),
    ("not-an-image", _b64(b"hello, this is text and not a picture"), 400, "not a decodable image"),
    ("truncated-jpeg", _b64(make_jpeg(200, 200, 3)[:300]), 400, "not a decodable image"),
    ("pixel-bomb", _b64(_png_header(100_000, 100_000)), 400, "larger than"),
    ("over-limit", b'{"instances": [' + b"0," * (SERVER_BODY_LIMIT // 2) + b"0]}", 413, "exceeds the limit"),
]


@pytest.mark.parametrize("target", ["server", "dispatcher"])
@pytest.mark.parametrize(("body", "status", "phrase"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_body_is_a_json_4xx_and_serving_goes_on(stack: Stack, target: str, body: bytes, status: int, phrase: str):
    got, answer = send(stack.url(target), body)
    assert (got, set(answer)) == (status, {"error"}), answer
    assert phrase in answer["error"]
    assert_still_serving(stack.url(target))


@pytest.mark.parametrize("target", ["server", "dispatcher"])
def test_chunked_body_over_the_limit_is_413(stack: Stack, target: str):
    limit = SERVER_BODY_LIMIT if target == "server" else DISPATCHER_BODY_LIMIT
    body = b'{"instances": [' + b"0," * limit + b"0]}"
    status, answer = send(stack.url(target), body, chunked=True)
    assert status == 413 and "exceeds the limit" in answer["error"]
    assert_still_serving(stack.url(target))


def test_dispatcher_refuses_bodies_over_its_own_limit_without_forwarding(stack: Stack):
    body = b'{"instances": [' + b"0," * DISPATCHER_BODY_LIMIT + b"0]}"
    status, answer = send(stack.url("dispatcher"), body)
    assert status == 413 and f"limit of {DISPATCHER_BODY_LIMIT} bytes" in answer["error"]


@pytest.mark.parametrize(
    ("target", "method", "path", "status", "phrase"),
    [
        ("server", "POST", "/v1/models/resnet999:predict", 404, "Servable not found"),
        ("server", "POST", "/v1/models/resnet18/versions/7:predict", 404, "Specific(resnet18, 7)"),
        ("server", "POST", "/v1/models/resnet18/versions/abc:predict", 404, "Specific(resnet18, abc)"),
        ("server", "POST", "/v1/models/resnet18/labels/canary:predict", 404, "Servable not found"),
        ("server", "POST", "/v1/models/resnet18/junk/1/2:predict", 404, "Malformed request"),
        ("server", "POST", "/v1/models/resnet18:classify", 400, "unsupported method :classify"),
        ("server", "POST", "/v1/models/resnet18", 400, "unsupported method"),
        ("server", "GET", "/v1/models/resnet18:predict", 404, "Malformed request"),
        ("server", "PUT", "/v1/models/resnet18:predict", 405, "not allowed"),
        ("server", "DELETE", "/v1/models/resnet18", 405, "not allowed"),
        ("server", "POST", "/admin/backends", 404, "Malformed request"),
        ("server", "GET", "/../../etc/passwd", 404, "Malformed request"),
        ("dispatcher", "POST", "/v1/models/resnet999:predict", 404, "Servable not found"),
        ("dispatcher", "POST", f"/v1/models/{PUBLIC}/versions/7:predict", 404, "Specific(resnet18, 7)"),
        ("dispatcher", "POST", f"/v1/models/{PUBLIC}/versions/abc:predict", 404, "must be a number"),
        ("dispatcher", "POST", f"/v1/models/{PUBLIC}/versions/1%0D%0AX-Evil:%201:predict", 404, "must be a number"),
        ("dispatcher", "POST", f"/v1/models/{PUBLIC}/versions/{'9' * 30}:predict", 404, "must be a number"),
        ("dispatcher", "POST", f"/v1/models/{PUBLIC}:classify", 400, "unsupported method :classify"),
        ("dispatcher", "GET", f"/v1/models/{PUBLIC}:predict", 404, "Servable not found"),
        ("dispatcher", "DELETE", f"/v1/models/{PUBLIC}:predict", 405, "not allowed"),
        ("dispatcher", "PUT", "/healthz", 405, "not allowed"),
        ("dispatcher", "POST", "/v2/models/x/infer", 404, "Malformed request"),
        ("dispatcher", "GET", "/v1/models/resnet999", 404, "Servable not found"),
    ],
)
def test_unknown_models_versions_verbs_and_paths_are_json_4xx(stack, target, method, path, status, phrase):
    body = _numeric_instance() if method in ("POST", "PUT") else None
    got, answer = send(stack.url(target), body, method=method, path=path)
    assert (got, set(answer)) == (status, {"error"}), answer
    assert phrase in answer["error"]
    assert_still_serving(stack.url(target))


def test_dispatcher_refuses_a_content_type_it_cannot_forward(stack: Stack):
    host, port, path = stack.url("dispatcher")
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\xc3\xa9\r\n"
            b"Content-Length: " + str(len(GOOD)).encode() + b"\r\nConnection: close\r\n\r\n" + GOOD
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Content-Type: printable ASCII" in answer
    assert_still_serving(stack.url("dispatcher"))


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("target", ["server", "dispatcher"])
def test_half_sent_requests_never_block_others(stack: Stack, target: str):
    host, port, path = stack.url(target)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):  # more than the queue / in-flight slots
            sock = socket.create_connection((host, port), timeout=30)
            sock.sendall(head + b'{"instances": [')  # ... and the rest never comes
            slow.append(sock)
        headers_only = socket.create_connection((host, port), timeout=30)
        headers_only.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode())  # slowloris
        slow.append(headers_only)
        for _ in range(3):
            assert_still_serving((host, port, path))
        # Each half-sent body gets a 408 at its deadline, as JSON.
        for sock in slow[:SLOW_CLIENTS]:
            answer = _read_all(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b'"error": "request body not received within' in answer
        # The one that never finished its headers gets a 408 at the head deadline, and is closed.
        answer = _read_all(headers_only)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error": "request headers not received within' in answer
        assert_still_serving((host, port, path))
    finally:
        for sock in slow:
            sock.close()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("target", ["server", "dispatcher"])
def test_many_header_phase_clients_cannot_exhaust_the_server(stack: Stack, target: str):
    """200 connections that send part of a request head (or nothing at all) are answered 408 and
    closed at the head deadline; meanwhile good requests are served, and afterwards the server holds
    as many open files as before."""
    host, port, path = stack.url(target)
    # The dispatcher runs inside the test process (its client sockets are counted there too, and
    # closed before the count is compared); the model server is a process of its own.
    pid = stack.server.proc.pid if target == "server" else os.getpid()
    assert_still_serving((host, port, path))  # warm: the dispatcher's pool holds its connection
    before = _open_fds(pid)
    partial = [b"", b"P", f"POST {path} HTTP/1.1\r\n".encode(), f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode()]
    clients = []
    try:
        for i in range(HEADER_PHASE_CLIENTS):
            sock = socket.create_connection((host, port), timeout=30)
            if partial[i % len(partial)]:
                sock.sendall(partial[i % len(partial)])
            clients.append(sock)
        for _ in range(3):
            assert_still_serving((host, port, path))
        answers = [_read_all(sock) for sock in clients]  # each ends when the server closes it
    finally:
        for sock in clients:
            sock.close()
    assert len(answers) == HEADER_PHASE_CLIENTS
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error": "request headers not received within' in answer
    assert_still_serving((host, port, path))
    # The server closes its side when it answers; allow the event loop a moment for the last ones.
    after = _open_fds(pid)
    for _ in range(50):
        if after <= before:
            break
        time.sleep(0.1)
        after = _open_fds(pid)
    assert after <= before, f"{target} holds {after - before} more open files than before the clients came"


def test_the_server_survived_everything_and_counted_it(stack: Stack):
    assert stack.server.proc.poll() is None
    assert_still_serving(stack.url("server"))
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(b"GET /monitoring/prometheus/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = _read_all(sock).decode()
    assert 'request_count{model_name="resnet18",status="INVALID_ARGUMENT"}' in text
    assert 'request_count{model_name="resnet18",status="RESOURCE_EXHAUSTED"}' in text
    assert 'request_count{model_name="resnet18",status="INTERNAL"}' not in text  # no 500 anywhere
