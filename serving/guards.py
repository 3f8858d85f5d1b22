"""What the API does about clients it cannot trust: slow ones, large ones, ones that leave.

- ``GuardedH11`` (uvicorn's h11 protocol, ``steelsight serve`` uses it): a request's head
  (request line and headers) must arrive within ``serve_head_timeout_s`` and be at most
  ``serve_max_head_bytes``; otherwise 408 or 431 and the connection is closed. uvicorn's
  default protocol (httptools) has neither limit.
- ``BodyGuard`` (ASGI middleware): a body is counted while it streams, chunked or not,
  multipart or not, and refused with 413 once it passes the route's limit, before it is
  spooled anywhere; the whole body must arrive within ``serve_body_timeout_s`` (408).
- ``request_id``: a client's X-Request-ID is echoed and logged only when it is a short
  plain token; otherwise the server makes its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.settings import get_settings

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries around the frames


def request_id(given: str | None) -> str:
    """The client's request id when it is a plain token of at most 64 characters (so a
    header cannot flood the log), else a new one."""
    if given and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex[:16]


def _raw_response(status: int, phrase: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a time and a size limit on each request's head."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._head_timeout_s = settings.serve_head_timeout_s
        self._max_head = settings.serve_max_head_bytes
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, for a blank line split across reads
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # still reading a head: count it first
            end = (self._head_tail + data).find(b"\r\n\r\n")
            head = len(data) if end < 0 else end + 4 - len(self._head_tail)
            self._head_bytes += head
            self._head_tail = data[-3:]
            self._arm()
            if self._head_bytes > self._max_head:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "head_too_large",
                    f"the request line and headers are more than {self._max_head} bytes "
                    "(serve_max_head_bytes)",
                )
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the body has its own limit
            self._head_bytes, self._head_tail = 0, b""
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_bytes, self._head_tail = 0, b""

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if (
            self.conn.their_state is h11.IDLE
            and self._head_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(
                408,
                "Request Timeout",
                "request_timeout",
                f"the request's headers did not arrive within {self._head_timeout_s:g} s "
                "(serve_head_timeout_s)",
            )
        elif self.conn.their_state is h11.IDLE and self.cycle is None:
            self.transport.close()  # connected and sent nothing

    def _refuse(self, status: int, phrase: str, code: str, message: str) -> None:
        log.warning("%s from %s: %s", status, self.client, message)
        self._disarm()
        self.transport.write(_raw_response(status, phrase, code, message))
        self.transport.close()


class BodyGuard:
    """ASGI middleware: a request body is counted as it streams and must arrive in time.

    When a body passes its limit or its time, the guard answers (413 or 408) itself and
    tells the route the client is gone (``http.disconnect``): raising from ``receive``
    would surface as a 500, since Starlette reads it in a task group."""

    def __init__(self, app, one_frame_bytes: int, batch_frames: int, timeout_s: float) -> None:
        self.app = app
        self.one = one_frame_bytes + MULTIPART_OVERHEAD
        self.batch = one_frame_bytes * batch_frames + MULTIPART_OVERHEAD
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        batch = scope["path"].rstrip("/").endswith("/batch")
        limit = self.batch if batch else self.one
        deadline = time.monotonic() + self.timeout_s
        seen = 0
        complete = refused = started = False

        async def refuse(status: int, code: str, message: str) -> dict:
            nonlocal refused
            refused = True
            if not started:
                body = json.dumps(
                    {"error": {"status": status, "code": code, "message": message, "field": "body"}}
                ).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            return {"type": "http.disconnect"}

        async def guarded_receive():
            nonlocal seen, complete
            if refused:
                return {"type": "http.disconnect"}
            if complete:  # the body is in: what follows is the disconnect, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return await refuse(
                    408,
                    "request_timeout",
                    f"the body did not arrive within {self.timeout_s:g} s (serve_body_timeout_s)",
                )
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit:
                    return await refuse(
                        413,
                        "body_too_large",
                        f"the body is more than the {limit} bytes this route takes "
                        f"({'max_batch_frames x ' if batch else ''}max_image_bytes, plus "
                        "multipart headers)",
                    )
            else:
                complete = True
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if refused:  # the answer went out already; the route's own is dropped
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)
