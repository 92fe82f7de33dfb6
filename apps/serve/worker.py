"""One interpreter process of effnet-serve's pool, and the framing both ends of its socket use
(pool.py is the other end).

Frames are an 8-byte little-endian length, then that many bytes; their contents are JSON and
raw image bytes only (an upload is untrusted: nothing is unpickled):
  ready:   {"ok": true, "digest": ...}  or  {"error": "..."}, and the worker exits
  request: 4-byte length of the JSON header, the header {"name", "top_k", "threshold"}, the image
  reply:   {"kind": "ok", "result": {...}} | {"kind": "image"|"model"|"internal", "error": "..."}
It ignores SIGINT and SIGTERM: a terminal's Ctrl-C or systemd's stop reaches the whole process
group, but the server stops its workers itself once in-flight requests are answered. A worker
exits when its socket closes, so it never outlives the server.
"""
from __future__ import annotations

import io
import json
import os
import signal

from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.quiet import Captured

from ..parallel import outcome

LENGTH = 8      # bytes of a frame's length prefix


def request_frame(request: dict, image: bytes) -> list[bytes]:
    """The pieces of the frame the server writes for one image (no copy of the image)."""
    header = json.dumps(request).encode()
    size = 4 + len(header) + len(image)
    return [size.to_bytes(LENGTH, "little") + len(header).to_bytes(4, "little") + header, image]


def reply_frame(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return len(payload).to_bytes(LENGTH, "little") + payload


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            raise EOFError
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(conn, model: str, options: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = conn.fileno()
    os.set_blocking(fd, True)
    quiet = Captured()
    try:
        with quiet:
            clf = Classifier.from_file(model, ClassifierOptions(**options))
    except Exception as e:      # reported by the server, which refuses to start
        _write(fd, reply_frame({"error": str(e)}))
        return
    _write(fd, reply_frame({"ok": True, "digest": clf.backend.digest}))
    try:
        while True:
            frame = _read_exactly(fd, int.from_bytes(_read_exactly(fd, LENGTH), "little"))
            size = int.from_bytes(frame[:4], "little")
            request = json.loads(frame[4:4 + size])
            upload = io.BytesIO(memoryview(frame)[4 + size:])
            upload.name = request["name"]       # errors name the upload, as effnet-infer's name the file
            _write(fd, reply_frame(answer(clf, quiet, upload, request)))
    except (EOFError, OSError):     # the server closed the socket (or died): stop
        pass


def answer(clf: Classifier, quiet: Captured, upload, request: dict) -> dict:
    def work(image):
        return clf.classify(image, max_results=request["top_k"], score_threshold=request["threshold"])
    try:
        kind, payload, notes = outcome(quiet, work, upload)
    except Exception as e:      # a bug of ours: a 500 for this request, the worker lives on
        return {"kind": "internal", "error": f"{type(e).__name__}: {e}"}
    if kind == "ok":
        payload.source = request["name"]
        return {"kind": "ok", "result": payload.to_dict()}
    return {"kind": kind, "error": payload + (f" [{notes[0]}]" if notes else "")}
