"""Request bodies are checked before any route parses them: size, media type, UTF-8.

FastAPI would read any size of body and report a non-UTF-8 one only as "There was an error parsing
the body"; this middleware answers 413, 415 or 400 with a message that says what was wrong.
"""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyGuard:
    """ASGI middleware: bodies over `max_bytes`, not JSON or not UTF-8 are refused with a 4xx."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, f"the request body is {int(declared):,} bytes; "
                               f"this server takes at most {self.max_bytes:,} (--max-body-bytes)")
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # read the whole body, at most max_bytes of it, before the app sees any
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, 413, f"the request body is over {self.max_bytes:,} bytes, "
                                   "the most this server takes (--max-body-bytes)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            problem = _body_problem(body, headers.get("content-type"))
            if problem is not None:
                await self._refuse(scope, receive, send, *problem)
                return
            if "content-type" not in headers:
                # Taken for JSON, as FastAPI only parses a body that says it is (Python's requests with data= says nothing).
                scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _body_problem(body: bytes, content_type: str | None) -> tuple[int, str] | None:
    """(status, message) when a body cannot be JSON text, else None."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return 415, f"send JSON with Content-Type: application/json, not {content_type}"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return 400, f"the request body is not UTF-8 text: byte 0x{body[exc.start]:02x} at offset {exc.start}"
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then listens for a disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
