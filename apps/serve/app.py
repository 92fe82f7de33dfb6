"""effnet-serve's HTTP application (Starlette): routes, JSON errors, access log.

Every answer that is not a success is a small JSON object {"error": "...", "status": N}.
Uploads are bounded by uploads.py (size, speed, per client, memory), the queue by the pool's
workers + max-queue places, which a request takes once its image has arrived.
"""
from __future__ import annotations

import asyncio
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .clients import ClientAddresses, ClientMiddleware
from .connections import Connections
from .guard import SCOPE_KEY, Guard, RateLimit, Token, error_body
from .metrics import CONTENT_TYPE, ServiceMetrics
from .pool import Busy, Pool, WorkerLost
from .uploads import Refused, Uploads

STATIC = Path(__file__).with_name("static")
RAW_TYPES = ("application/octet-stream", "")          # plus image/*
HOW_TO_SEND = ("send the image as the body (Content-Type image/* or application/octet-stream) "
               "or as a file field of a multipart/form-data form")


@dataclass
class Settings:
    model: str                  # the file, as given
    options: dict               # ClassifierOptions fields for each worker
    summary: dict               # GET /v1/model
    workers: int
    max_queue: int
    uploads: Uploads            # the upload limits (max_upload is uploads.max_upload)
    timeout: float              # seconds, per request
    top_k: int = 5              # when the request does not say
    verbose: bool = False       # tracebacks of internal errors in the log
    token: Token | None = None              # required on /v1/* when set
    rate: RateLimit | None = None           # per client, on /v1/*
    strangers: RateLimit | None = None      # per client, requests without a valid token
    addresses: ClientAddresses = field(default_factory=ClientAddresses)    # who a request comes from
    protect_metrics: bool = False           # /metrics needs the token too
    connections: Connections | None = None  # the server's connection limits, for /metrics


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status, headers)


def create_pool(settings: Settings) -> Pool:
    # A worker still busy well past a request's deadline is stuck (not just slow): replace it.
    return Pool(settings.model, settings.options, settings.workers, settings.max_queue,
                settings.summary.get("digest"), stuck_after=max(5.0, 2 * settings.timeout))


def create_app(settings: Settings, pool: Pool, log=None):
    """The ASGI application; `pool` must be started (and later closed) by the caller, on the
    event loop the server runs on. Access lines go to `log` (default stderr)."""
    metrics = ServiceMetrics(pool, settings.connections, settings.uploads, settings.rate)
    classes = settings.summary["labels"]

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def model(request: Request) -> Response:
        return JSONResponse(settings.summary)

    async def health(request: Request) -> Response:
        ready = sum(w.ready for w in pool.workers.values())
        body = {"status": "ok" if ready else "unavailable", "workers_ready": ready,
                "workers": settings.workers, "queue_depth": pool.queued()}
        return JSONResponse(body, 200 if ready else 503)

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.text(), headers={"Content-Type": CONTENT_TYPE})

    async def classify(request: Request) -> Response:
        try:
            reply = await classify_upload(request)
        except Refused as e:
            return e.response()
        except ClientDisconnect:
            return Response(status_code=499)        # nobody to answer; logged as nginx does
        if reply["kind"] == "ok":
            metrics.observe_result(reply["result"])
            return JSONResponse(reply["result"])
        return error(400 if reply["kind"] == "image" else 500, reply["error"])

    async def classify_upload(request: Request) -> dict:
        deadline = asyncio.get_running_loop().time() + settings.timeout
        top_k, threshold = query_options(request, settings.top_k, classes)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media in RAW_TYPES or media.startswith("image/") or media == "multipart/form-data"):
            raise Refused(415, f"Content-Type {media!r} is not accepted: {HOW_TO_SEND}")
        declared = request.headers.get("content-length", "")
        uploads = settings.uploads
        if declared.isdigit() and int(declared) > uploads.max_upload:
            raise uploads.too_large(int(declared))
        busy = Refused(503, f"all {settings.workers} workers are busy and {settings.max_queue} "
                            "requests are queued; retry shortly", {"Retry-After": "1"})
        if pool.full():
            busy.headers["Connection"] = "close"      # rather than read an upload in vain
            raise busy
        uploading = True
        try:
            # One deadline for the whole request, upload and queue included: slow or endless
            # uploads cannot hold a connection forever. A place is taken once the image is in.
            async with asyncio.timeout_at(deadline):
                with uploads.request(request.scope.get(SCOPE_KEY, "?")) as ticket:
                    body = await uploads.read(request, ticket)
                    uploading = False
                    with pool.admission():
                        if media == "multipart/form-data":
                            body, name = await form_image(request, body)
                        else:
                            name = request.query_params.get("name", "upload")[:200]
                        return await pool.classify(body, {"name": name, "top_k": top_k, "threshold": threshold})
        except Busy:
            raise busy from None
        except TimeoutError:
            if uploading:
                raise Refused(408, f"the upload did not arrive within the request timeout "
                                   f"({settings.timeout:g} s)", {"Connection": "close"}) from None
            raise Refused(504, f"no answer within the request timeout ({settings.timeout:g} s)") from None
        except WorkerLost as e:
            raise Refused(500, str(e)) from None

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def internal_error(request: Request, exc: Exception) -> Response:
        log_internal_error(f"on {request.method} {request.url.path}", exc, settings.verbose)
        return error(500, "internal error (see the server's log)")

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
    guarded = Guard(app, settings.token, settings.rate, settings.protect_metrics, settings.strangers)
    return ClientMiddleware(AccessLog(guarded, metrics, log or sys.stderr), settings.addresses)


def log_internal_error(where: str, exc: BaseException, verbose: bool) -> None:
    """One line on stderr (the traceback too with -v). Starlette re-raises what its handler
    answered, and uvicorn logs it again: the mark lets that second report be dropped."""
    print(f"effnet-serve: internal error {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
          file=sys.stderr, flush=True)
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    try:
        exc.effnet_logged = True
    except AttributeError:      # (an exception type with __slots__)
        pass


def query_options(request: Request, default_k: int, classes: int) -> tuple[int, float]:
    q = request.query_params
    if "top_k" not in q:            # the default: as many as the model has, up to --top-k
        default_k = min(default_k, classes)
    top_k, threshold = q.get("top_k", str(default_k)), q.get("threshold", "0")
    try:
        k = int(top_k)
        if not 1 <= k <= classes:
            raise ValueError
    except ValueError:
        raise Refused(400, f"top_k must be a whole number from 1 to {classes}, not {top_k[:40]!r}") from None
    try:
        t = float(threshold)
        if not (math.isfinite(t) and 0 <= t <= 1):
            raise ValueError
    except ValueError:
        raise Refused(400, f"threshold must be a probability from 0 to 1, not {threshold[:40]!r}") from None
    return k, t


async def form_image(request: Request, body: bytes) -> tuple[bytes, str]:
    """The one file of a multipart/form-data body, and its file name."""
    async def stream():
        yield body
    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as e:
        raise Refused(400, f"bad multipart form: {e.message}") from None
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                return await value.read(), (value.filename or "upload")[:200]
    finally:
        await form.close()
    raise Refused(400, "the multipart form has no file field (send the image as a file, "
                             "e.g. curl -F image=@photo.jpg)")


async def http_error(request: Request, exc: HTTPException) -> Response:
    message = exc.detail if exc.detail and exc.status_code not in (404, 405) else {
        404: f"no such resource: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, exc.detail)
    return error(exc.status_code, message, exc.headers)


class AccessLog:
    """ASGI middleware: one line per request on stderr, and the request counters/latency."""

    def __init__(self, app, metrics: ServiceMetrics, stream):
        self.app, self.metrics, self.stream = app, metrics, stream

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, sent = time.perf_counter(), 500, 0

        async def send_logged(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)
        try:
            await self.app(scope, receive, send_logged)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe(scope["path"], status, seconds)
            client = (scope.get("client") or ("-",))[0]
            query = scope.get("query_string", b"").decode("latin-1")
            target = printable(scope["path"] + (f"?{query}" if query else ""))[:200]
            print(f'{client} "{scope["method"]} {target} HTTP/{scope["http_version"]}" {status} '
                  f"{sent}B {seconds * 1e3:.1f}ms", file=self.stream, flush=True)


def printable(text: str) -> str:
    """Control characters escaped: a request cannot add lines of its own to the log."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
