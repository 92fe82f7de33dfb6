"""effnet-serve: classify images over HTTP, with a web page to try it (camera included).

POST an image to /v1/classify and get the top classes as JSON (the shape of
`effnet-infer --json`); open the URL it prints in a browser for the page. Each of
--workers processes holds its own interpreter. Ctrl-C or SIGTERM stops it cleanly:
requests in flight are answered first. Access lines and diagnostics go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from effnet_lite import BackendUnavailableError, Classifier, ClassifierOptions, ModelError, __version__
from effnet_lite.backends import BACKENDS
from effnet_lite.errors import needs_extra
from effnet_lite.quiet import Captured

from .clients import IPV6_PREFIXES, ClientAddresses, parse_proxies
from .connections import (ACCEPT_BATCH, BACKLOG, DEFAULT_MAX_CONNECTIONS, Connections, connection_limits,
                          default_protocol, guarded, tls_context)
from .guard import TOKEN_ENV, GuardError, access_rules, cleartext_warning

EXAMPLES = """\
examples:
  effnet-serve --model lite0_int8.tflite                      (http://127.0.0.1:8000/)
  effnet-serve --model lite0_int8.tflite --host 0.0.0.0       (reachable on the LAN)
  curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/classify?top_k=3'
  curl -F image=@photo.jpg http://127.0.0.1:8000/v1/classify

With --token-file, /v1/* needs 'Authorization: Bearer <token>' (curl -H @header-file or
-H "Authorization: Bearer $(cat token)"); /healthz, the page and /metrics stay open. A --host
other than loopback needs --token-file, or --no-auth to say that anyone may use it.

On a network: clients are told apart by their address (IPv6: by /64). Behind a reverse proxy,
name it with --trust-proxy so that its X-Forwarded-For is believed (and nobody else's). Without
--tls-cert the token crosses the network in cleartext.

API: POST /v1/classify (?top_k=5&threshold=0), GET /v1/model, GET /healthz, GET /metrics
(Prometheus). Errors are JSON: {"error": "...", "status": N}; 503 (with Retry-After) when
--workers are busy and --max-queue requests wait. Memory held by uploads is at most
(workers + max-queue) x max-upload-mb. Browsers allow the camera only on localhost or over
HTTPS: give --tls-cert/--tls-key to use it from another machine.
"""


def parse_args(argv=None):
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="effnet-serve", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help=".tflite or .onnx model file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (8000; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=min(cores, 4),
                   help=f"interpreter processes (default: one per core, at most 4; here {min(cores, 4)})")
    p.add_argument("--threads", type=int, default=1, help="inference threads per worker (1)")
    p.add_argument("--max-upload-mb", type=float, default=20, metavar="MB",
                   help="largest accepted upload; bigger ones get 413 before they are read (20)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests that may wait for a busy worker; more get 503 + Retry-After (16)")
    p.add_argument("--timeout", type=float, default=30, metavar="S",
                   help="seconds a request may take, upload and queue included: 408 while "
                        "uploading, 504 after (30)")
    p.add_argument("--header-timeout", type=float, default=10, metavar="S",
                   help="seconds a connection has for its request line and headers; then 408 and closed (10)")
    p.add_argument("--keep-alive-timeout", type=float, default=5, metavar="S",
                   help="seconds an idle kept-alive connection stays open (5)")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help=f"open connections at most; one more closes the slowest still sending its headers "
                        f"(default: {DEFAULT_MAX_CONNECTIONS}, or less if the descriptor limit needs it)")
    p.add_argument("--token-file", metavar="FILE", default=os.environ.get(TOKEN_ENV),
                   help=f"require 'Authorization: Bearer <token>' on /v1/*, the token read from FILE "
                        f"(default: ${TOKEN_ENV})")
    p.add_argument("--no-auth", action="store_true",
                   help="serve anyone who can reach a non-loopback --host, without a token")
    p.add_argument("--protect-metrics", action="store_true", help="/metrics needs the token too")
    p.add_argument("--rate-limit", metavar="N/s",
                   help="requests per second (or N/min) each client (its address; IPv6: its /64) may make on "
                        "/v1/*; more get 429 + Retry-After (default: no limit)")
    p.add_argument("--unauthenticated-rate", metavar="N/s",
                   help="with --token-file: requests without a valid token per client, counted apart so that "
                        "they cannot spend the token holders' allowance (default: a tenth of --rate-limit)")
    p.add_argument("--max-client-requests", type=int, metavar="N",
                   help="classify requests one client may have in progress (uploading, queued or running); "
                        "more get 429 (default: 2 x --workers, at least 4)")
    p.add_argument("--min-upload-rate", type=float, default=10, metavar="KB/s",
                   help="an upload slower than this (after 2 s) gets 408 and its connection is closed (10 kB/s)")
    p.add_argument("--trust-proxy", metavar="ADDR[,ADDR]",
                   help="reverse proxies (addresses or networks) whose X-Forwarded-For names the client; "
                        "without it the header is ignored and the peer's address is the client")
    p.add_argument("--proxy-header", choices=["x-forwarded-for", "forwarded"], default="x-forwarded-for",
                   help="the header the trusted proxies set (x-forwarded-for; forwarded: RFC 7239)")
    p.add_argument("--ipv6-prefix", type=int, choices=IPV6_PREFIXES, default=64,
                   help="IPv6 clients are counted by their network of this size (64)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="classes per answer unless ?top_k= says (5)")
    p.add_argument("--backend", choices=list(BACKENDS), help="force a backend (default: by file type)")
    p.add_argument("--exact", action="store_true", help="bit-identical reference preprocessing (slower)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (and --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-handshake-timeout", type=float, default=5, metavar="S",
                   help="seconds a connection has for its TLS handshake; then closed (5)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of internal errors in the log")
    p.add_argument("--version", action="version", version=f"effnet-serve {__version__}")
    args = p.parse_args(argv)
    if not 1 <= args.workers <= 64:
        p.error("--workers must be between 1 and 64")
    if not 1 <= args.threads <= 64:
        p.error("--threads must be between 1 and 64")
    if not 0 <= args.port <= 65535:
        p.error("--port must be between 0 and 65535")
    if not 0 < args.max_upload_mb <= 1024:
        p.error("--max-upload-mb must be above 0 and at most 1024")
    if not 0 <= args.max_queue <= 10000:
        p.error("--max-queue must be between 0 and 10000")
    if not 0 < args.timeout <= 3600:
        p.error("--timeout must be above 0 and at most 3600 seconds")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    for name in ("header_timeout", "keep_alive_timeout", "tls_handshake_timeout"):
        if not 0 < getattr(args, name) <= 3600:
            p.error(f"--{name.replace('_', '-')} must be above 0 and at most 3600 seconds")
    if args.max_connections is not None and args.max_connections < 1:
        p.error("--max-connections must be at least 1")
    if args.max_client_requests is None:
        args.max_client_requests = max(4, 2 * args.workers)
    if args.max_client_requests < 1:
        p.error("--max-client-requests must be at least 1")
    if not 0 < args.min_upload_rate <= 1e6:
        p.error("--min-upload-rate must be above 0 (kB/s)")
    if args.unauthenticated_rate and not args.token_file:
        p.error("--unauthenticated-rate needs --token-file")
    if args.no_auth and args.token_file:
        p.error("--no-auth and --token-file contradict each other" +
                (f" (${TOKEN_ENV} is set)" if os.environ.get(TOKEN_ENV) == args.token_file else ""))
    if args.protect_metrics and not args.token_file:
        p.error("--protect-metrics needs --token-file")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return args


def model_summary(clf: Classifier, model: str, workers: int, threads: int) -> dict:
    """GET /v1/model: the file as the runtime understood it."""
    meta, io = clf.metadata, clf.io
    return {
        "model": Path(model).name,
        "format": Path(model).suffix.lstrip(".").lower(),
        "variant": meta.variant if meta else None,
        "precision": meta.precision if meta else None,
        "input_size": io.config.size,
        "input_type": io.input_dtype.name,
        "interpolation": io.config.interpolation,
        "crop_pct": io.config.crop_pct,
        "labels": len(io.labels),
        "output": "probabilities" if io.output_is_probability else "logits",
        "backend": clf.backend.name,
        "workers": workers,
        "threads": threads,
        "digest": clf.backend.digest,
        "version": __version__,
        "cpu_int8_class": clf.cpu_int8_class,
        "int8_caveat": clf.int8_caveat or None,     # why answers may differ on this CPU
    }


class _OneLine(logging.Handler):
    """uvicorn's own warnings and errors as one stderr line each (tracebacks only with -v)."""

    def __init__(self, verbose: bool = False):
        super().__init__(logging.WARNING)
        self.verbose = verbose

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if record.getMessage().startswith("Exception in ASGI application") and exc is not None:
            # an exception outside the routes (e.g. in the access log); those inside them
            # were logged, once, by the app's handler
            if not getattr(exc, "effnet_logged", False):
                from .app import log_internal_error     # (loaded by now: it serves the routes)
                log_internal_error("outside the routes", exc, self.verbose)
            return
        lines = record.getMessage().strip().splitlines() or [""]
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        print(f"effnet-serve: {lines[0]}{detail}", file=sys.stderr, flush=True)


def quiet_uvicorn_logs(verbose: bool) -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate, logger.level = [_OneLine(verbose)], False, logging.WARNING


def served_at(banner: str) -> tuple[str, str, int] | None:
    """(URL, host, port) from the line effnet-serve prints once it is ready, else None: for
    programs that start it with --port 0."""
    words = banner.split()
    if len(words) < 2 or "://" not in words[1]:
        return None
    parts = urlsplit(words[1])
    return words[1], parts.hostname, parts.port


def fail(message: str) -> int:
    print(f"effnet-serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    if sys.version_info < (3, 11):
        return fail("effnet-serve needs Python 3.11 or newer (Pi OS bookworm has 3.11)")
    try:
        import python_multipart  # noqa: F401  (Starlette's form parser needs it)
        import uvicorn  # noqa: F401

        from .app import Settings
        from .uploads import Uploads
    except ImportError as e:
        print(needs_extra("effnet-serve", f"effnet-serve ({e.name or e} is missing)", "serve"), file=sys.stderr)
        return 2
    try:
        guard = access_rules(args)
        limits = connection_limits(args)
        addresses = ClientAddresses(parse_proxies(args.trust_proxy), args.proxy_header, args.ipv6_prefix)
        tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except GuardError as e:
        return fail(str(e))
    if warning := cleartext_warning(args):
        print(f"effnet-serve: {warning}", file=sys.stderr, flush=True)
    options = ClassifierOptions(num_threads=args.threads, backend=args.backend, exact=args.exact)
    quiet = Captured()
    try:
        with quiet:
            clf = Classifier.from_file(args.model, options)
    except (ModelError, BackendUnavailableError) as e:
        return fail(str(e))
    summary = model_summary(clf, args.model, args.workers, args.threads)
    summary["limits"] = {**asdict(limits), "request_timeout": args.timeout, "max_upload_mb": args.max_upload_mb,
                         "max_queue": args.max_queue, "rate_limit_per_s": guard["rate"].rate if guard["rate"] else None,
                         "unauthenticated_rate_per_s": guard["strangers"].rate if guard["strangers"] else None,
                         "max_client_requests": args.max_client_requests, "min_upload_kb_per_s": args.min_upload_rate,
                         "trusted_proxies": [str(n) for n in addresses.trusted], "ipv6_prefix": args.ipv6_prefix,
                         "auth": "token" if guard["token"] else "none"}
    if summary["int8_caveat"]:
        print(f"effnet-serve: warning: {summary['int8_caveat']}", file=sys.stderr)
    clf.close()         # each worker opens its own; this one checked the file and described it
    max_upload = int(args.max_upload_mb * 1e6)
    uploads = Uploads(max_upload, budget=(args.workers + args.max_queue) * max_upload,
                      per_client=args.max_client_requests, min_rate=args.min_upload_rate * 1e3)
    settings = Settings(model=str(args.model), options=asdict(options), summary=summary, workers=args.workers,
                        max_queue=args.max_queue, uploads=uploads, timeout=args.timeout, top_k=args.top_k,
                        verbose=args.verbose, protect_metrics=args.protect_metrics,
                        connections=Connections(limits, tls), addresses=addresses, **guard)
    try:
        sock = listen(args.host, args.port)
    except OSError as e:
        return fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    quiet_uvicorn_logs(args.verbose)
    return run_loop(serve(args, settings, sock))


def run_loop(main_coroutine) -> int:
    """uvloop's event loop where installed (as uvicorn would choose), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coroutine)
    return uvloop.run(main_coroutine)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle off only on sockets that say so, and with
    # Nagle on, a response's body waits out the client's delayed ACK (40 ms) on a kept-alive
    # connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)    # connections wait in the backlog while the workers start
    return sock


async def serve(args, settings, sock: socket.socket) -> int:
    import uvicorn

    from .app import create_app, create_pool
    from .pool import StartError

    class Server(uvicorn.Server):
        banner = ""

        async def startup(self, sockets=None):
            await super().startup(sockets)
            # asyncio's loop takes `backlog` as both the kernel's queue and the connections it
            # accepts per wake-up: the latter stays ACCEPT_BATCH (see connections.py), the
            # queue goes back to BACKLOG, so that a flood does not make good clients' SYNs wait
            for s in sockets or ():
                s.listen(BACKLOG)
            if self.started:        # listening, and uvicorn's stop-signal handlers are in place
                print(self.banner, flush=True)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                print(f"effnet-serve: stopping; finishing {len(self.server_state.tasks)} request(s) "
                      "in flight", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

    pool = create_pool(settings)
    try:
        await pool.start()
    except StartError as e:
        sock.close()
        return fail(str(e))
    # TLS is not uvicorn's: the connection guard does the handshake (connections.py), so that
    # it is counted in --max-connections and has a deadline; uvicorn's X-Forwarded-For
    # handling is off, the client's address is decided once (clients.py)
    config = uvicorn.Config(create_app(settings, pool), log_config=None, access_log=False, lifespan="off",
                            server_header=False, http=guarded(default_protocol(), settings.connections),
                            timeout_keep_alive=settings.connections.limits.keep_alive_timeout,
                            timeout_graceful_shutdown=int(settings.timeout) + 5, proxy_headers=False,
                            backlog=ACCEPT_BATCH)
    server = Server(config)
    host, port = sock.getsockname()[:2]
    s = settings.summary
    what = " ".join(str(x) for x in (s["variant"], s["precision"]) if x) or s["model"]
    # printed once the server is listening with its stop-signal handlers: a program that starts
    # it and stops it as soon as it reads this line gets a clean stop (exit 0)
    server.banner = (f"effnet-serve: {'https' if args.tls_cert else 'http'}://{f'[{host}]' if ':' in host else host}:"
                     f"{port}/  ({what} on {s['backend']}, {settings.workers} worker(s) x {args.threads} thread(s); "
                     "Ctrl-C stops)")
    # uvicorn re-raises the stop signal once it has shut down: let it land on a no-op, so the
    # workers are stopped here, after the last answer, and the exit status is 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        await server.serve(sockets=[sock])
    finally:
        await pool.close()
    print(f"effnet-serve: stopped after {server.server_state.total_requests} request(s)",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
