"""Uploads on their way in: a floor on their speed, a cap per client, and one memory budget.

A classify request takes one of the workers + queue places only once its image has arrived, so
a slow upload holds its connection and the bytes it has sent, never a place that a ready request
could use. What bounds the uploads instead:
- speed: after a grace of UPLOAD_GRACE seconds, an upload must keep up --min-upload-rate
  (bytes arrived >= rate x time), else 408 and the connection is closed;
- per client: at most --max-client-requests classify requests in progress (uploading, queued or
  running) for one client (its address or IPv6 network), else 429;
- memory: the bytes held by uploads over all requests stay within the budget (the old bound,
  (workers + max-queue) x max-upload), else 503.
"""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import dataclass

from .guard import error_body

UPLOAD_GRACE = 2.0          # seconds before the speed floor applies (TCP slow start, a radio waking up)


class Refused(Exception):
    """A request we answer with an error (4xx/5xx) and a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers

    def response(self):
        from starlette.responses import JSONResponse
        return JSONResponse(error_body(self.status, self.message), self.status, self.headers)


@dataclass
class _Ticket:
    bytes: int = 0          # what this request's upload holds


class Uploads:
    def __init__(self, max_upload: int, budget: int, per_client: int, min_rate: float, grace: float = UPLOAD_GRACE):
        self.max_upload, self.budget, self.per_client = max_upload, budget, per_client
        self.min_rate, self.grace = min_rate, grace             # bytes/s, s
        self.active: dict[str, int] = {}        # client key -> classify requests in progress
        self.reading = 0                        # requests reading their upload
        self.held = 0                           # bytes held by uploads (read, queued or running)
        self.refused = {"too_slow": 0, "per_client": 0, "budget": 0}

    def too_large(self, size: int) -> Refused:
        return Refused(413, f"the upload is {size / 1e6:.1f} MB or more, over the "
                            f"{self.max_upload / 1e6:g} MB limit (--max-upload-mb)", {"Connection": "close"})

    @contextmanager
    def request(self, key: str):
        """One classify request of client `key`, from its headers to its answer; 429 when that
        client has --max-client-requests in progress already."""
        n = self.active.get(key, 0)
        if n >= self.per_client:
            self.refused["per_client"] += 1
            raise Refused(429, f"this client already has {n} requests in progress, the most one client may have "
                               "(--max-client-requests); retry when one is answered",
                          {"Retry-After": "1", "Connection": "close"})
        self.active[key] = n + 1
        ticket = _Ticket()
        try:
            yield ticket
        finally:
            self.held -= ticket.bytes
            if self.active[key] > 1:
                self.active[key] -= 1
            else:
                del self.active[key]

    async def read(self, request, ticket: _Ticket) -> bytes:
        """The body, refused as soon as it is too large (413), too slow (408) or over the budget (503)."""
        loop = asyncio.get_running_loop()
        start, size, chunks = loop.time(), 0, []
        stream = request.stream()
        self.reading += 1
        try:
            while True:
                try:
                    async with asyncio.timeout_at(start + self.grace + size / self.min_rate):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    self.refused["too_slow"] += 1
                    raise Refused(408, f"the upload arrived at under {self.min_rate / 1e3:g} kB/s ({size} bytes in "
                                       f"{loop.time() - start:.1f} s; --min-upload-rate)", {"Connection": "close"}) from None
                size += len(chunk)
                if size > self.max_upload:
                    raise self.too_large(size)
                if self.held + len(chunk) > self.budget:
                    self.refused["budget"] += 1
                    raise Refused(503, f"the server holds {self.held / 1e6:.0f} MB of uploads, its limit; retry shortly",
                                  {"Retry-After": "1", "Connection": "close"})
                self.held += len(chunk)
                ticket.bytes += len(chunk)
                chunks.append(chunk)
        finally:
            self.reading -= 1
        return b"".join(chunks)
