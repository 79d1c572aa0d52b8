"""Helpers for the dispatcher and load generator tests (no tests here).

``TFServingBackend`` is a real aiohttp HTTP server that speaks TF Serving's predict API (a stand-in
for a model server: it answers a fixed prediction instead of running a model). Each one records
what it received and can be told to answer slowly, fail, or hold requests until released.
Servers run on an event loop in a background thread so that the tests themselves stay synchronous
and use plain HTTP clients (urllib, the DispatcherClient, the load generator).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from infadapter.serving.dispatcher import BackendSpec, Dispatcher, DispatcherConfig

TOKEN = "test-admin-token"


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class TFServingBackend:
    """A real aiohttp server answering ``POST /v1/models/NAME:predict`` like TF Serving."""

    name: str
    status: int = 200  # answer this status (>= 400: a TF-Serving-style {"error": ...} body)
    delay_s: float = 0.0
    keepalive_timeout_s: float = 75.0
    chunked: bool = False  # answer with Transfer-Encoding: chunked instead of a Content-Length
    close: bool = False  # answer with Connection: close (no keep-alive)
    paths: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    port: int = 0
    gate: asyncio.Event | None = None  # when set up, requests wait for it (release with open_gate)
    runner: web.AppRunner | None = None

    async def _predict(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.paths.append(request.path)
        self.bodies.append(body)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status != 200:
            return web.json_response({"error": f"{self.name} told to fail"}, status=self.status)
        try:
            instances = json.loads(body)["instances"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "JSON with instances required"}, status=400)
        answer = {
            "predictions": [[0.25, 0.75] for _ in instances],
            "backend": self.name,
            "model": request.match_info["name"],
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        headers = {"Connection": "close"} if self.close else None
        if not self.chunked:
            return web.json_response(answer, headers=headers)
        stream = web.StreamResponse(headers={"Content-Type": "application/json"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        text = json.dumps(answer).encode()
        for i in range(0, len(text), 16):
            await stream.write(text[i : i + 16])
        await stream.write_eof()
        return stream  # type: ignore[return-value]

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}]}
        )

    async def start(self) -> TFServingBackend:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/models/{name}:predict", self._predict)
        app.router.add_post("/v1/models/{name}/versions/{version}:predict", self._predict)
        app.router.add_get("/v1/models/{name}", self._status)
        self.runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=self.keepalive_timeout_s, shutdown_timeout=1.0
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            if self.gate is not None:
                self.gate.set()
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spec(self, weight: float = 1.0) -> BackendSpec:
        return BackendSpec(name=self.name, url=self.url, model=self.name, weight=weight)


class Cluster:
    """Backends and dispatchers on one background loop; everything stops in :meth:`close`."""

    def __init__(self) -> None:
        self.lt = LoopThread()
        self.backends: list[TFServingBackend] = []
        self.runners: list[web.AppRunner] = []

    def backend(self, name: str, gated: bool = False, **kw: Any) -> TFServingBackend:
        b = TFServingBackend(name, **kw)

        async def go() -> TFServingBackend:
            if gated:
                b.gate = asyncio.Event()
            return await b.start()

        self.lt.run(go())
        self.backends.append(b)
        return b

    def open_gate(self, backend: TFServingBackend) -> None:
        assert backend.gate is not None
        self.lt.call(backend.gate.set)

    def dispatcher(self, backends: list[BackendSpec] | tuple[()] = (), **config: Any) -> tuple[Dispatcher, str]:
        cfg = DispatcherConfig(port=0, admin_token=TOKEN, **config)

        async def go() -> tuple[Dispatcher, str]:
            d = Dispatcher(cfg, backends)
            runner, port = await d.start()
            self.runners.append(runner)
            return d, f"http://127.0.0.1:{port}"

        return self.lt.run(go())

    def close(self) -> None:
        async def stop_all() -> None:
            for runner in self.runners:
                await runner.cleanup()
            for b in self.backends:
                await b.stop()

        try:
            self.lt.run(stop_all())
        finally:
            self.lt.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when not JSON


def http(
    method: str, url: str, body: bytes | dict[str, Any] | None = None, token: str | None = None, timeout: float = 30
) -> Reply:
    """One plain urllib call; JSON bodies parsed."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, dict(exc.headers), exc.read()
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(status, headers, parsed)


def predict(base: str, model: str = "resnet", body: dict[str, Any] | None = None) -> Reply:
    return http("POST", f"{base}/v1/models/{model}:predict", body or {"instances": [{"b64": "AAAA"}]})
