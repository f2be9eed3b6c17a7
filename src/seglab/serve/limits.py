"""What keeps one server healthy under load and abuse: a bounded worker pool (a full queue is refused at once)
and ASGI middleware that caps request bodies while they stream in and turns unexpected errors into JSON."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from starlette.exceptions import HTTPException

logger = logging.getLogger("seglab.serve")


class Busy(Exception):
    """The pool's workers and its queue are all taken."""


class BoundedPool:
    """``threads`` worker threads and at most ``queue`` more jobs waiting for one; ``run`` raises ``Busy`` at once
    beyond that, instead of queueing without limit."""

    def __init__(self, threads: int, queue: int):
        if threads < 1 or queue < 0:
            raise ValueError(f"the pool needs threads >= 1 and queue >= 0, got threads={threads}, queue={queue}")
        self.threads, self.capacity = threads, threads + queue
        self._lock = threading.Lock()
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Jobs running or waiting now."""
        return self._pending

    @property
    def full(self) -> bool:
        """Whether ``run`` would refuse a job now."""
        return self._pending >= self.capacity

    def _release(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    def busy(self) -> Busy:
        return Busy(f"{self._pending} requests are running or waiting (the limit is {self.capacity})")

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` on a worker thread; its slot is held until ``fn`` returns, even if the caller is gone."""
        with self._lock:
            if self.full:
                raise self.busy()
            self._pending += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="seglab-serve")
            try:
                future = self._executor.submit(fn, *args)
            except BaseException:
                self._pending -= 1
                raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop the workers (jobs not started are dropped); a later ``run`` starts new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


async def send_json(send, status: int, detail: str) -> None:
    """A complete JSON ``{"detail": ...}`` response on a raw ASGI ``send``."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Responses:
    """A raw ASGI ``send`` that remembers whether the response has started (after that, no other can be sent)."""

    def __init__(self, send):
        self.send, self.started = send, False

    async def __call__(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class TooLarge(HTTPException):
    """A request body over the limit; FastAPI passes an HTTPException raised while it reads the body on to its
    handler, which answers it (413, JSON)."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


class BodyLimit:
    """ASGI middleware: a request whose body exceeds ``max_bytes`` gets 413. A declared Content-Length is
    checked before anything is read; otherwise the body is counted as it streams through to the app, and the
    read past the limit raises ``TooLarge`` instead of returning the chunk, so the rest is never read. The body is
    not buffered here (Starlette spools uploads to a temporary file)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | str) -> str:
        return f"request body of {size} bytes is over the server's limit of {self.max_bytes} bytes (--max-upload-mb)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, self._too_large(declared))
        size, responses = 0, Responses(send)

        async def counted():
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise TooLarge(self._too_large(f"more than {self.max_bytes}"))
            return message

        try:
            await self.app(scope, counted, responses)
        except TooLarge as error:  # an app that let it through (FastAPI answers it itself)
            if responses.started:
                raise
            await send_json(send, 413, error.detail)


class CatchAll:
    """ASGI middleware: an exception no handler answered is logged with its traceback and becomes a JSON 500
    (no traceback goes to the client), and the server goes on serving."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        responses = Responses(send)
        try:
            await self.app(scope, receive, responses)
        except Exception as error:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not responses.started:
                await send_json(send, 500, f"internal error ({type(error).__name__}); the server log has the details")
