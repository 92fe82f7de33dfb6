"""Who may use effnet-serve: a bearer token, and a per-client rate limit (ASGI middleware).

The token guards /v1/* (and /metrics with --protect-metrics); /healthz, the page and its
static files stay open, so that health checks work and the page can ask for the token. The
rate limit counts /v1/* requests per client (its address or IPv6 network, see clients.py) with
a token bucket; requests without a valid token have a stricter bucket of their own.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import socket
import stat
import time
from collections import OrderedDict

TOKEN_ENV = "EFFNET_SERVE_TOKEN_FILE"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE = 4096
TRACKED_CLIENTS = 4096          # rate-limit buckets kept (least recently seen dropped first)
REALM = 'Bearer realm="effnet-serve"'
SCOPE_KEY = "effnet.client_key"     # the ASGI scope entry holding the client's key (clients.py)
STRANGER_SHARE = 0.1                # requests without a valid token: a tenth of --rate-limit


class GuardError(ValueError):
    """A token file, --rate-limit, --host or connection limit that cannot be used (one line, naming it)."""


def load_token(path: str) -> str:
    """The token in `path`: one line of at least 16 printable characters, in a file that not
    every user of the machine can read."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise GuardError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise GuardError(f"the token file {path} is not a regular file")
    if mode & stat.S_IROTH:
        raise GuardError(f"the token file {path} is readable by every user of this machine: "
                         f"chmod 600 {path} (or use systemd's LoadCredential=)")
    if len(data) > MAX_TOKEN_FILE:
        raise GuardError(f"the token file {path} is over {MAX_TOKEN_FILE} bytes: it should hold one line, the token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise GuardError(f"the token file {path} is not ASCII text") from None
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise GuardError(f"the token file {path} must hold one token: printable characters, no spaces or lines")
    if len(token) < MIN_TOKEN_CHARS:
        raise GuardError(f"the token in {path} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                         "(e.g. openssl rand -hex 32)")
    return token


class Token:
    def __init__(self, token: str):
        self._digest = hashlib.sha256(token.encode()).digest()

    def matches(self, given: str) -> bool:
        """Compares digests with hmac.compare_digest: the time taken says nothing about how
        much of the token, or of its length, a guess got right."""
        return hmac.compare_digest(hashlib.sha256(given.encode("latin-1")).digest(), self._digest)


def parse_rate(text: str, flag: str = "--rate-limit") -> float:
    """'10/s', '600/min' or '10' (per second) as requests per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*", text or "")
    if not m:
        raise GuardError(f"{flag} {text!r}: give requests per second or minute, e.g. 10/s or 600/min")
    n = float(m.group(1)) / (60 if (m.group(2) or "s").startswith("m") else 1)
    if not 0 < n <= 1e6 or not math.isfinite(n):
        raise GuardError(f"{flag} {text!r} must be above 0")
    return n


class RateLimit:
    """A token bucket per client: `rate` requests per second on average, bursts of up to
    `burst` (one second's worth, at least 1).

    At most `tracked` buckets are kept. A client seen for the first time when the table is full
    takes the place of the least recently seen one only if that bucket has refilled (forgetting
    it then gives nobody anything); otherwise every tracked client was active within one refill
    time, and the newcomer shares a single overflow bucket. So no number of other addresses
    gives a throttled client its allowance back early.
    """

    def __init__(self, rate: float, clock=time.monotonic, tracked: int = TRACKED_CLIENTS):
        self.rate, self.burst, self.clock, self.tracked = rate, max(1.0, rate), clock, tracked
        self.refill = self.burst / rate             # seconds from empty to full
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()    # key -> (tokens, when)
        self.overflow: tuple[float, float] | None = None
        self.overflowed = 0                         # requests counted in the overflow bucket

    def wait(self, client: str) -> float:
        """0 when `client` may go on now (and it is counted), else the seconds until it may."""
        now = self.clock()
        state = self.buckets.pop(client, None)
        shared = False
        if state is None and len(self.buckets) >= self.tracked:
            _, (_, seen) = next(iter(self.buckets.items()))
            if now - seen >= self.refill:
                self.buckets.popitem(last=False)
            else:
                shared, state = True, self.overflow
                self.overflowed += 1
        tokens, then = state or (self.burst, now)
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        state = (tokens - 1 if not wait else tokens, now)
        if shared:
            self.overflow = state
        else:
            self.buckets[client] = state
        return wait


def _throttled(limit: RateLimit, key: str, what: str):
    """A 429 when `key` is over `limit`, else None (and the request is counted)."""
    wait = limit.wait(key)
    if not wait:
        return None
    return _json(429, f"over the rate limit of {limit.rate:g} requests/s{what} for this client; "
                      f"retry in {wait:.1f} s", [(b"retry-after", str(math.ceil(wait)).encode())])


def error_body(status: int, message: str) -> dict:
    """Every error the service answers, as JSON (the app's, the middleware's and the
    connection guard's)."""
    return {"error": message, "status": status}


def _json(status: int, message: str, headers: list[tuple[bytes, bytes]]):
    body = json.dumps(error_body(status, message)).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]}
    return start, {"type": "http.response.body", "body": body}


class Guard:
    """ASGI middleware: the token, then the rate limit, before the app sees the request.
    Requests without a valid token are counted apart (`strangers`, a stricter allowance): they
    cannot spend the allowance of the clients that hold the token, behind the same NAT or proxy."""

    def __init__(self, app, token: Token | None, rate: RateLimit | None, protect_metrics: bool = False,
                 strangers: RateLimit | None = None):
        self.app, self.token, self.rate, self.protect_metrics = app, token, rate, protect_metrics
        self.strangers = strangers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        api = path.startswith("/v1/")
        key = scope.get(SCOPE_KEY) or (scope.get("client") or ("?",))[0]
        refusal = None
        if self.token is not None and (api or (path == "/metrics" and self.protect_metrics)):
            refusal = self._check_token(scope)
            if refusal is not None and self.strangers is not None:
                refusal = _throttled(self.strangers, key, " without a valid token") or refusal
        if refusal is None and api and self.rate is not None:
            refusal = _throttled(self.rate, key, "")
        if refusal is None:
            return await self.app(scope, receive, send)
        start, body = refusal
        if any(k == b"transfer-encoding" or (k == b"content-length" and v != b"0") for k, v in scope["headers"]):
            start["headers"].append((b"connection", b"close"))    # rather than read a refused upload
        await send(start)
        await send(body)

    def _check_token(self, scope):
        given = [v for k, v in scope["headers"] if k == b"authorization"]
        scheme, _, credentials = (given[0].decode("latin-1") if given else "").partition(" ")
        if not given or scheme.lower() != "bearer":
            return _json(401, "this server needs a token: send the header Authorization: Bearer <token>",
                         [(b"www-authenticate", REALM.encode())])
        if len(given) > 1 or not self.token.matches(credentials.strip()):
            return _json(401, "the token is not right", [(b"www-authenticate", f'{REALM}, error="invalid_token"'.encode())])
        return None


def access_rules(args) -> dict:
    """The token and rate limits (Settings fields); a non-loopback --host needs a token or --no-auth."""
    token = Token(load_token(args.token_file)) if args.token_file else None
    if token is None and not args.no_auth and not is_loopback(args.host):
        raise GuardError(f"--host {args.host} lets other machines in: give --token-file FILE (see --help), "
                         "or --no-auth to serve anyone who can reach it")
    rate = RateLimit(parse_rate(args.rate_limit)) if args.rate_limit else None
    strangers = None
    if token is not None and args.unauthenticated_rate:
        strangers = RateLimit(parse_rate(args.unauthenticated_rate, "--unauthenticated-rate"))
    elif token is not None and rate is not None:
        strangers = RateLimit(rate.rate * STRANGER_SHARE)
    return {"token": token, "rate": rate, "strangers": strangers}


def cleartext_warning(args) -> str | None:
    """The start-up warning when a token crosses the network unencrypted."""
    if args.token_file and not args.tls_cert and not is_loopback(args.host):
        return (f"warning: --host {args.host} without --tls-cert: the token crosses the network in cleartext, "
                "and anyone who can see the traffic can reuse it; add --tls-cert/--tls-key (see --help)")
    return None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(f[4][0].split("%")[0]).is_loopback for f in found)
