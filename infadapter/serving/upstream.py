"""Keep-alive HTTP/1.1 connection pools to the dispatcher's backends (plain ``http://``).

Why not aiohttp's ClientSession here: on this 2-core machine one aiohttp client request costs about
250-330 us of CPU (measured, see docs/dispatcher.md), which alone caps a dispatcher process near
3,000 req/s before the server side is counted. The backend hop is the simplest HTTP there is (one
POST with a body, one answer with a length, keep-alive), so a small pool of asyncio protocols with
llhttp's parser (``httptools``, the parser uvicorn uses) does it for a fraction of that. HTTPS
backends still go through aiohttp (see :mod:`infadapter.serving.dispatcher`).

One :class:`UpstreamPool` per backend origin; a connection serves one request at a time and goes
back to the pool's idle stack when its answer is complete and the server keeps it alive.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import httptools


class UpstreamError(Exception):
    """The backend could not be reached, closed the connection, or sent an invalid answer."""


class UpstreamTimeout(UpstreamError):
    """No complete answer within the timeout."""


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_content_type",
        "_got_bytes",
        "_parser",
        "_timer",
        "_waiter",
        "closed",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body: list[bytes] = []
        self._content_type = b""
        self._got_bytes = False
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # One write per request, but never let Nagle wait for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid HTTP answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError("connection closed by the backend" + (f" ({exc})" if exc else "")))

    # -- httptools callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 12 and name.lower() == b"content-type":
            self._content_type = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            status = self._parser.get_status_code()
            if not self._parser.should_keep_alive():
                self.close()
            waiter.set_result((status, self._content_type, b"".join(self._body)))

    # -- use ----------------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _on_timeout(self) -> None:
        self._fail(UpstreamTimeout("no complete answer in time"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes, timeout_s: float) -> tuple[int, bytes, bytes]:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._body = []
        self._content_type = b""
        self._got_bytes = False
        self._timer = loop.call_later(timeout_s, self._on_timeout)
        try:
            assert self.transport is not None
            self.transport.write(request)
            return await waiter
        finally:
            self._timer.cancel()
            self._waiter = None
            if not waiter.done():  # cancelled from outside: the answer would arrive for nobody
                self.close()


class UpstreamPool:
    """Keep-alive connections to one ``http://host:port`` origin."""

    def __init__(self, host: str, port: int, max_idle: int = 256) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: deque[_Connection] = deque()
        self._host_header = f"{host}:{port}".encode()
        self._closed = False

    def request_bytes(self, path: str, body: bytes, content_type: str) -> bytes:
        """One POST, headers and body in a single buffer (a single write)."""
        head = (
            b"POST " + path.encode("latin-1") + b" HTTP/1.1\r\nHost: " + self._host_header
            + b"\r\nContent-Type: " + content_type.encode("latin-1")
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )  # fmt: skip
        return head + body

    async def _connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"connect to {self.host}:{self.port} failed ({exc.strerror or exc})") from None
        return conn

    async def post(self, path: str, body: bytes, content_type: str, timeout_s: float) -> tuple[int, str, bytes]:
        """POST ``body`` to ``path``; returns (status, content type, body). Raises UpstreamError/Timeout."""
        request = self.request_bytes(path, body, content_type)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                result = await conn.exchange(request, timeout_s)
            except UpstreamTimeout:
                raise
            except UpstreamError:
                if conn._got_bytes:
                    raise
                # The server closed this idle connection before we used it (its keep-alive ran
                # out): nothing was processed, so the request goes again on a fresh connection.
                continue
            self._release(conn)
            return result[0], result[1].decode("latin-1"), result[2]
        conn = await self._connect(timeout_s)
        result = await conn.exchange(request, max(deadline - loop.time(), 0.001))
        self._release(conn)
        return result[0], result[1].decode("latin-1"), result[2]

    def _release(self, conn: _Connection) -> None:
        if conn.closed or self._closed or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close idle connections; connections in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
