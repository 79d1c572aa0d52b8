"""A deadline on the request head (request line and headers) for the aiohttp servers.

aiohttp (3.14) bounds a request body only where the handler does (both servers read it under
``body_timeout_s``), and a connection waiting for its request head only by the keep-alive timeout
(3630 s by default). So a client that sends ``POST /x HTTP/1.1\\r\\nHost: x\\r\\n`` and never the
blank line ("slowloris"), or opens a connection and sends nothing, held it for an hour: a few
hundred of them hold as many file descriptors.

:class:`HeadDeadlineRunner` is an ``AppRunner`` whose connections are :class:`HeadDeadlineHandler`
protocols: a timer starts when the connection is made and again when the first bytes of the next
request arrive on a kept-alive connection, and stops when a whole head has been parsed. When it
fires while the handler is still waiting for that head, the client gets a TF-Serving-style JSON
408 and the connection is closed. Idle kept-alive connections (no bytes since the last answer)
stay governed by the keep-alive timeout, as before.

A head that arrives while the previous request on the same connection is still being served
(pipelining) is not timed; if it is left unfinished, the keep-alive timeout closes the connection.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


def _timeout_answer(timeout_s: float) -> bytes:
    body = json.dumps({"error": f"request headers not received within {timeout_s:g} s"}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection protocol plus the head deadline (see the module doc).

    Cheap per request: arming sets a deadline (one ``loop.time()``), a completed head clears it, and
    one timer per connection fires at most once per ``head_timeout_s`` (it re-arms itself at the
    current deadline, as aiohttp's own keep-alive timer does) instead of a timer per request.
    """

    __slots__ = ("_head_answer", "_head_deadline", "_head_handle", "_head_timeout_s", "_heads_at_arm")

    def __init__(self, manager: web.Server, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_answer = _timeout_answer(head_timeout_s)
        self._head_handle: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None  # loop time by which the awaited head is due
        self._heads_at_arm = 0

    def _arm(self) -> None:
        self._heads_at_arm = self._request_count
        self._head_deadline = deadline = self._loop.time() + self._head_timeout_s
        if self._head_handle is None:
            self._head_handle = self._loop.call_at(deadline, self._head_expired)

    def _waiting_for_head(self) -> bool:
        """True while the handler waits for the next request (none parsed and queued)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # the first head is due within the deadline of the connection's opening

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and self._waiting_for_head():
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self._head_deadline is not None and self._request_count != self._heads_at_arm:
            self._head_deadline = None  # a whole head arrived in time

    def _head_expired(self) -> None:
        self._head_handle = None
        deadline = self._head_deadline
        transport = self.transport
        if deadline is None or transport is None or self._force_close:
            return
        if self._loop.time() < deadline:  # re-armed since this timer was set: wait for the new deadline
            self._head_handle = self._loop.call_at(deadline, self._head_expired)
            return
        self._head_deadline = None
        if self._request_count != self._heads_at_arm or self._request_in_progress or not self._waiting_for_head():
            return  # a head came, or a request is being served (its body has its own deadline)
        transport.write(self._head_answer)
        self.force_close()  # closes the transport once the answer is written

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None
        self._head_deadline = None
        super().connection_lost(exc)


class _HeadDeadlineServer(web.Server):
    """aiohttp's low-level server, making :class:`HeadDeadlineHandler` protocols."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s

    def __call__(self) -> RequestHandler:
        return HeadDeadlineHandler(self, loop=self._loop, head_timeout_s=self.head_timeout_s, **self._kwargs)


class HeadDeadlineRunner(web.AppRunner):
    """``web.AppRunner`` whose connections must send each request head within ``head_timeout_s``."""

    def __init__(self, app: web.Application, *, head_timeout_s: float, **kwargs: Any) -> None:
        if not head_timeout_s > 0:
            raise ValueError("head_timeout_s must be > 0")
        super().__init__(app, **kwargs)
        self.head_timeout_s = head_timeout_s

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's startup hooks run here, once
        return _HeadDeadlineServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            head_timeout_s=self.head_timeout_s,
            **plain._kwargs,  # what the app put there (debug, access log, handler_args)
        )
