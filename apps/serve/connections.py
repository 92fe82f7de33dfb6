"""effnet-serve's connection limits, kept by a small subclass of uvicorn's HTTP protocol.

uvicorn times out neither a connection that never finishes its request line and headers nor
one that trickles bytes after its last answer, and it accepts connections until the process
runs out of file descriptors (then nobody is served). Here each connection is in one of three
phases:
- waiting for its headers: from the moment it opens (or its next request's first byte
  arrives) it has --header-timeout seconds, then gets 408 and is closed;
- running a request: the app's own deadline (--timeout) holds; nothing here touches it;
- idle between requests: uvicorn's keep-alive timeout closes it.

At most --max-connections are open. One more makes room by closing the connection that has
waited longest for its headers (else the longest idle one); only when every connection is
running a request is the newcomer refused with 503. A slow client therefore costs the others
nothing but a place it is about to lose.
"""
from __future__ import annotations

import json
import resource
from dataclasses import dataclass

from .guard import GuardError, error_body

# Descriptors the server needs besides its connections: the listening socket, stdio, the
# event loop's own, the model file, /proc reads for /metrics, and a few per worker (its pipe
# and process sentinel).
RESERVED_FDS = 64
FDS_PER_WORKER = 4
DEFAULT_MAX_CONNECTIONS = 1000      # a Pi-sized default; --max-connections for more


@dataclass(frozen=True)
class Limits:
    header_timeout: float           # seconds for the request line and headers
    keep_alive_timeout: float       # seconds an idle kept-alive connection stays open
    max_connections: int
    fd_limit: int                   # the soft RLIMIT_NOFILE after raise_fd_limit()


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (the default soft limit, 1024, is what
    most services get); the limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connections_allowed(fd_limit: int, workers: int) -> int:
    """The most connections the descriptor limit leaves room for."""
    return fd_limit - RESERVED_FDS - FDS_PER_WORKER * workers


def connection_limits(args) -> Limits:
    """effnet-serve's limits from its arguments, after raising the descriptor limit; a
    --max-connections the limit cannot hold is a GuardError (one line)."""
    fd_limit = raise_fd_limit()
    room = connections_allowed(fd_limit, args.workers)
    if room < 1 or (args.max_connections or 0) > room:
        raise GuardError(f"the descriptor limit ({fd_limit} open files) leaves room for {max(room, 0)} connections "
                         f"with {args.workers} worker(s): raise it (ulimit -n, systemd LimitNOFILE=) or lower "
                         "--max-connections")
    return Limits(header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                  max_connections=args.max_connections or min(DEFAULT_MAX_CONNECTIONS, room), fd_limit=fd_limit)


def _reply(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(status, message)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + body


class Connections:
    """What every connection shares: the limits, the phases, and the counters for /metrics."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.open: set = set()
        self.waiting: dict = {}         # waiting for headers, oldest first (dicts keep order)
        self.idle: dict = {}            # between requests, oldest first
        self.timed_out = {"headers": 0, "idle": 0}
        self.evicted = {"headers": 0, "idle": 0}
        self.refused = 0
        s = limits.header_timeout
        self.too_slow = _reply(408, "Request Timeout", f"the request line and headers did not arrive "
                                                       f"within {s:g} s (--header-timeout)")
        self.full = _reply(503, "Service Unavailable", f"the server is at its limit of "
                                                       f"{limits.max_connections} connections; retry shortly",
                           "retry-after: 1\r\n")

    def make_room(self) -> bool:
        """Close the connection that has waited longest for its headers, else the longest
        idle one; False when every connection is running a request."""
        for phase, members, reply in (("headers", self.waiting, self.full), ("idle", self.idle, b"")):
            if members:
                victim = next(iter(members))
                self.evicted[phase] += 1
                victim.close_now(reply)
                return True
        return False


def guarded(protocol_class: type, connections: Connections) -> type:
    """`protocol_class` (uvicorn's HttpToolsProtocol or H11Protocol) with the limits above.
    Both create `self.cycle` once a request's headers are complete, and arm
    `timeout_keep_alive_task` once its answer is sent: the phases are read from those."""

    class Guarded(protocol_class):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            c = connections
            if len(c.open) >= c.limits.max_connections and not c.make_room():
                c.refused += 1
                transport.write(c.full)
                transport.close()
                return
            c.open.add(self)
            self._wait_for_headers()

        def connection_lost(self, exc):
            self._leave_phase()
            connections.open.discard(self)
            super().connection_lost(exc)

        def data_received(self, data):
            if self in connections.idle:         # the first bytes of the next request
                self._leave_phase()
                self._wait_for_headers()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before and self in connections.waiting:
                self._leave_phase()              # headers complete: the request runs

        def on_response_complete(self):
            before, timer = self.cycle, self.timeout_keep_alive_task
            super().on_response_complete()
            if (self.cycle is before and self.timeout_keep_alive_task is not timer
                    and self in connections.open and not self.transport.is_closing()):
                connections.idle[self] = None

        def timeout_keep_alive_handler(self):
            if not self.transport.is_closing():
                connections.timed_out["idle"] += 1
            self._leave_phase()
            super().timeout_keep_alive_handler()

        def _wait_for_headers(self):
            connections.waiting[self] = None
            self._header_timer = self.loop.call_later(connections.limits.header_timeout, self._headers_late)

        def _headers_late(self):
            self._header_timer = None
            if self in connections.waiting and not self.transport.is_closing():
                connections.timed_out["headers"] += 1
                self.close_now(connections.too_slow)

        def _leave_phase(self):
            connections.waiting.pop(self, None)
            connections.idle.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def close_now(self, reply: bytes):
            self._leave_phase()
            if reply:
                self.transport.write(reply)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{protocol_class.__name__}"
    return Guarded


def default_protocol() -> type:
    """uvicorn's choice: httptools where installed, else h11."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    return AutoHTTPProtocol
