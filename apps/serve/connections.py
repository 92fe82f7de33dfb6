"""effnet-serve's connection limits, kept by a small subclass of uvicorn's HTTP protocol.

uvicorn times out neither a connection that never finishes its request line and headers nor
one that trickles bytes after its last answer, and it accepts connections until the process
runs out of file descriptors (then nobody is served). Here each connection is in one of four
phases:
- in its TLS handshake (with --tls-cert): --tls-handshake-timeout seconds from the moment it
  opens, then closed (the handshake is done here with loop.start_tls, not by the event loop's
  server, so that it is counted and timed like any other phase);
- waiting for its headers: from the moment it opens (or its handshake ends, or its next
  request's first byte arrives) it has --header-timeout seconds, then gets 408 and is closed;
- running a request: the app's own deadline (--timeout) holds; nothing here touches it;
- idle between requests: uvicorn's keep-alive timeout closes it.

At most --max-connections are open. One more makes room by closing the connection that has
waited longest for its handshake or headers (else the longest idle one); only when every
connection is running a request is the newcomer refused with 503. A slow client therefore
costs the others nothing but a place it is about to lose.
"""
from __future__ import annotations

import asyncio
import json
import resource
import ssl
from dataclasses import dataclass

from .guard import GuardError, error_body

# Descriptors the server needs besides its connections: the listening socket, stdio, the
# event loop's own, the model file, /proc reads for /metrics, and a few per worker (its pipe
# and process sentinel). And room for connections accepted but not yet counted: asyncio's loop
# accepts up to ACCEPT_BATCH at each wake-up, and they reach connection_made a few turns of the
# loop later; a connection closed to make room frees its descriptor on the next turn.
ACCEPT_BATCH = 16
BACKLOG = 2048                  # the kernel's queue of connections not yet accepted (uvicorn's default)
RESERVED_FDS = 64 + 4 * ACCEPT_BATCH
FDS_PER_WORKER = 4
DEFAULT_MAX_CONNECTIONS = 1000      # a Pi-sized default; --max-connections for more
TLS_SHUTDOWN_TIMEOUT = 2.0          # seconds a closing TLS connection waits for the peer's close_notify


@dataclass(frozen=True)
class Limits:
    header_timeout: float           # seconds for the request line and headers
    keep_alive_timeout: float       # seconds an idle kept-alive connection stays open
    max_connections: int
    fd_limit: int                   # the soft RLIMIT_NOFILE after raise_fd_limit()
    handshake_timeout: float = 5.0  # seconds for the TLS handshake (with --tls-cert)


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
                  max_connections=args.max_connections or min(DEFAULT_MAX_CONNECTIONS, room), fd_limit=fd_limit,
                  handshake_timeout=args.tls_handshake_timeout)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for --tls-cert/--tls-key; GuardError (one line) if they cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise GuardError(f"cannot use the TLS certificate or key ({cert}, {key}): "
                         f"{getattr(e, 'strerror', None) or getattr(e, 'reason', None) or e}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def _reply(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(status, message)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + body


class Connections:
    """What every connection shares: the limits, the phases, and the counters for /metrics."""

    def __init__(self, limits: Limits, tls: ssl.SSLContext | None = None):
        self.limits, self.tls = limits, tls
        self.open: set = set()
        self.waiting: dict = {}         # in the handshake or waiting for headers, oldest first (dicts keep order)
        self.idle: dict = {}            # between requests, oldest first
        self.timed_out = {"handshake": 0, "headers": 0, "idle": 0}
        self.evicted = {"handshake": 0, "headers": 0, "idle": 0}
        self.refused = 0
        s = limits.header_timeout
        self.too_slow = _reply(408, "Request Timeout", f"the request line and headers did not arrive "
                                                       f"within {s:g} s (--header-timeout)")
        self.full = _reply(503, "Service Unavailable", f"the server is at its limit of "
                                                       f"{limits.max_connections} connections; retry shortly",
                           "retry-after: 1\r\n")

    def make_room(self) -> bool:
        """Close the connection that has waited longest for its handshake or headers, else the
        longest idle one; False when every connection is running a request."""
        if self.waiting:
            victim = next(iter(self.waiting))
            self.evicted[victim.phase] += 1
            victim.close_now(self.full)
            return True
        if self.idle:
            self.evicted["idle"] += 1
            next(iter(self.idle)).close_now(b"")
            return True
        return False


def guarded(protocol_class: type, connections: Connections) -> type:
    """`protocol_class` (uvicorn's HttpToolsProtocol or H11Protocol) with the limits above.
    Both create `self.cycle` once a request's headers are complete, and arm
    `timeout_keep_alive_task` once its answer is sent: the phases are read from those."""

    class Guarded(protocol_class):
        _header_timer = None
        phase = "headers"
        _raw = None                 # the TCP transport, while a TLS handshake is under way
        _early = None               # bytes read before the handshake began
        _plain = None               # bytes decrypted before the handshake's task resumed

        def connection_made(self, transport):
            c = connections
            if c.tls is None:
                super().connection_made(transport)
            else:       # uvicorn's protocol sees the connection once the handshake is done
                self._raw = transport
            if len(c.open) >= c.limits.max_connections and not c.make_room():
                c.refused += 1
                if c.tls is None:
                    transport.write(c.full)
                transport.close()
                return
            c.open.add(self)
            if c.tls is None:
                self._wait_for_headers()
                return
            self._early, self._plain = bytearray(), bytearray()
            transport.pause_reading()
            self._enter("handshake", c.limits.handshake_timeout)
            self.loop.create_task(self._handshake(transport))
            # queued after the task's first step, in which start_tls puts its TLS protocol in
            # place: then the client's first bytes, if read before that, are handed on to it
            self.loop.call_soon(self._hand_on_early_bytes, transport)

        async def _handshake(self, raw):
            limits = connections.limits
            tls = None
            if not raw.is_closing():
                try:
                    tls = await self.loop.start_tls(raw, self, connections.tls, server_side=True,
                                                    ssl_handshake_timeout=limits.handshake_timeout + 1,
                                                    ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT)
                except (Exception, asyncio.CancelledError):     # a failed, aborted or timed-out handshake
                    tls = None
            if tls is None or self not in connections.open or self.phase != "handshake":
                self._leave_phase()             # failed, timed out or made room: gone
                connections.open.discard(self)
                raw.abort()
                return
            self._leave_phase()
            self._raw, plain, self._plain = None, self._plain, None
            super().connection_made(tls)
            self._wait_for_headers()
            if plain:
                self.data_received(bytes(plain))

        def connection_lost(self, exc):
            self._leave_phase()
            connections.open.discard(self)
            if self._raw is None:               # (else the handshake's task cleans up)
                super().connection_lost(exc)

        def _hand_on_early_bytes(self, raw):
            tls_protocol, early, self._early = raw.get_protocol(), self._early, None
            if not early or tls_protocol is self or raw.is_closing():
                return
            view = memoryview(early)
            while view:                 # (both event loops' TLS protocols are buffered protocols)
                buffer = tls_protocol.get_buffer(len(view))
                n = min(len(buffer), len(view))
                buffer[:n] = view[:n]
                tls_protocol.buffer_updated(n)
                view = view[n:]

        def data_received(self, data):
            if self._raw is not None:
                # before the handshake: TLS bytes read before start_tls took over (uvloop reads
                # at once); after it, before start_tls has returned: the first request, decrypted
                (self._early if self._early is not None else self._plain).extend(data)
                return
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
            self._enter("headers", connections.limits.header_timeout)

        def _enter(self, phase: str, seconds: float):
            self.phase = phase
            connections.waiting[self] = None
            self._header_timer = self.loop.call_later(seconds, self._late)

        def _late(self):
            self._header_timer = None
            transport = self._raw if self._raw is not None else self.transport
            if self in connections.waiting and not transport.is_closing():
                connections.timed_out[self.phase] += 1
                self.close_now(connections.too_slow)

        def _leave_phase(self):
            connections.waiting.pop(self, None)
            connections.idle.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def close_now(self, reply: bytes):
            self._leave_phase()
            if self._raw is not None:           # in the handshake: no HTTP to answer with
                self.phase = "closed"
                self._raw.abort()
                return
            if reply:
                self.transport.write(reply)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{protocol_class.__name__}"
    return Guarded


def default_protocol() -> type:
    """uvicorn's choice: httptools where installed, else h11."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    return AutoHTTPProtocol
