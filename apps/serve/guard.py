"""Who may use effnet-serve: a bearer token, and a per-client rate limit (ASGI middleware).

The token guards /v1/* (and /metrics with --protect-metrics); /healthz, the page and its
static files stay open, so that health checks work and the page can ask for the token. The
rate limit counts /v1/* requests per client address with a token bucket.
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


def parse_rate(text: str) -> float:
    """'10/s', '600/min' or '10' (per second) as requests per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*", text or "")
    if not m:
        raise GuardError(f"--rate-limit {text!r}: give requests per second or minute, e.g. 10/s or 600/min")
    n = float(m.group(1)) / (60 if (m.group(2) or "s").startswith("m") else 1)
    if not 0 < n <= 1e6 or not math.isfinite(n):
        raise GuardError(f"--rate-limit {text!r} must be above 0")
    return n


class RateLimit:
    """A token bucket per client: `rate` requests per second on average, bursts of up to
    `burst` (one second's worth, at least 1)."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, max(1.0, rate), clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()    # client -> (tokens, when)

    def wait(self, client: str) -> float:
        """0 when `client` may go on now (and it is counted), else the seconds until it may."""
        now = self.clock()
        tokens, then = self.buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[client] = (tokens - 1 if not wait else tokens, now)
        while len(self.buckets) > TRACKED_CLIENTS:
            self.buckets.popitem(last=False)
        return wait


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
    """ASGI middleware: the rate limit, then the token, before the app sees the request."""

    def __init__(self, app, token: Token | None, rate: RateLimit | None, protect_metrics: bool = False):
        self.app, self.token, self.rate, self.protect_metrics = app, token, rate, protect_metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        api = path.startswith("/v1/")
        refusal = None
        if api and self.rate is not None:
            wait = self.rate.wait((scope.get("client") or ("?",))[0])
            if wait:
                refusal = _json(429, f"over the rate limit of {self.rate.rate:g} requests/s for this client; "
                                     f"retry in {wait:.1f} s", [(b"retry-after", str(math.ceil(wait)).encode())])
        if refusal is None and self.token is not None and (api or (path == "/metrics" and self.protect_metrics)):
            refusal = self._check_token(scope)
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
    """The token and rate limit (Settings fields); a non-loopback --host needs one or --no-auth."""
    token = Token(load_token(args.token_file)) if args.token_file else None
    if token is None and not args.no_auth and not is_loopback(args.host):
        raise GuardError(f"--host {args.host} lets other machines in: give --token-file FILE (see --help), "
                         "or --no-auth to serve anyone who can reach it")
    return {"token": token, "rate": RateLimit(parse_rate(args.rate_limit)) if args.rate_limit else None}


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
