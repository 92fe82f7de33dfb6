"""effnet-serve under load and abuse, loopback only and bounded: 960 requests from 16
concurrent clients with no error, then good clients interleaved with garbage, oversize, slow,
aborted and non-HTTP clients; every good answer exact, the server healthy, its memory flat.
`--serve-long` runs 10x as many requests."""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time

import pytest

from tests_helpers import require_module

require_module("uvicorn", "effnet-serve needs the 'serve' extra")

from PIL import Image  # noqa: E402

from conftest import DEV_DIR  # noqa: E402
from serve_helpers import Server, json_body, status_of  # noqa: E402
from tests_helpers import run_module  # noqa: E402


@pytest.fixture(scope="module")
def small_photos(lite0_files, tmp_path_factory):
    """Real photos re-saved at phone-thumbnail size (a few kB each), so that the load is on
    the service, not on JPEG decoding."""
    folder = tmp_path_factory.mktemp("small")
    sources = sorted(lite0_files["photos"].glob("*.jpg"))
    if DEV_DIR.is_dir():
        sources += sorted(DEV_DIR.glob("*.JPEG"))[5::40]
    for src in sources:
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((320, 320))
            im.save(folder / f"{src.stem}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))


@pytest.fixture(scope="module")
def reference(lite0_files, small_photos):
    """effnet-infer's answers for the same files: what every good request must get."""
    code, out, err = run_module("effnet_lite.apps.infer", *small_photos, "--model", lite0_files["int8.tflite"], "--json")
    assert code == 0, err
    return {os.path.basename(r["source"]): r["categories"] for r in map(json.loads, out.splitlines())}


def good_client(server, photos, reference, count, errors, answered, offset):
    conn = server.connection()
    try:
        for n in range(count):
            photo = photos[(offset + n) % len(photos)]
            try:
                status, _, body = server.classify(photo.read_bytes(), conn=conn)
            except OSError as e:        # a dropped keep-alive connection would be an error too
                errors.append(f"{photo.name}: {e!r}")
                conn.close()
                conn = server.connection()
                continue
            if status != 200 or body["categories"] != reference[photo.name]:
                errors.append(f"{photo.name}: {status} {str(body)[:200]}")
            answered.append(1)
    finally:
        conn.close()


def run_clients(clients: int, target, *args) -> float:
    threads = [threading.Thread(target=target, args=(*args, i)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return time.perf_counter() - t0


LOAD_EACH = 60          # per load client (16 of them)
GOOD_EACH = 480         # per good client among the abusive ones (8 of them)
FAULT_ROUNDS = 54       # per fault client (4 of them): 6 of each of the 9 kinds


def head(length: int | str, kind: str = "image/jpeg") -> bytes:
    return (f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def fault_client(server, photos, reference, rounds, outcomes, seed):
    """Each round, one kind of abuse, and a check of what the server answered."""
    rng = random.Random(seed)
    jpeg = photos[seed % len(photos)]
    data = jpeg.read_bytes()

    def record(kind, ok, detail=""):
        outcomes.append((kind, ok, detail))
    for n in range(rounds):
        kind = ("garbage", "truncated", "oversize", "slow", "aborted", "not-http", "method", "type",
                "hangup")[(n + seed) % 9]
        if kind == "garbage":
            status, _, body = server.classify(rng.randbytes(rng.randint(1, 50000)))
            record(kind, status == 400 and "upload" in body["error"], body)
        elif kind == "truncated":
            status, _, body = server.classify(data[: rng.randint(10, len(data) - 10)])
            record(kind, status == 400, body)
        elif kind == "oversize":
            reply = server.raw(head(30_000_000) + b"\xff" * 65536)
            record(kind, status_of(reply) == 413, reply[:80])
        elif kind == "slow":       # a slow but in-time upload is answered like any other
            with socket.create_connection((server.host, server.port), timeout=60) as sock:
                sock.sendall(head(len(data)))
                for part in range(4):
                    sock.sendall(data[part * len(data) // 4:(part + 1) * len(data) // 4])
                    time.sleep(0.1)
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            good = status_of(reply) == 200 and json_body(reply)["categories"] == reference[jpeg.name]
            record(kind, good, reply[:80])
        elif kind == "aborted":      # (logged as 499: counted at the end); the server lives on
            server.raw(head(len(data)) + data[: len(data) // 2], then_read=False, pause=0.05)
            record(kind, server.request("GET", "/healthz")[0] == 200)
        elif kind == "not-http":
            reply = server.raw(rng.randbytes(300) + b"\r\n\r\n")
            record(kind, status_of(reply) in (0, 400), reply[:80])
        elif kind == "method":
            status, _, body = server.request("PUT", "/v1/classify", data, {"Content-Type": "image/jpeg"})
            record(kind, status == 405 and body["status"] == 405, body)
        elif kind == "type":
            status, _, body = server.classify(data, content_type="application/json")
            record(kind, status == 415, body)
        else:                        # a hang-up before any byte: no log line, the server lives on
            socket.create_connection((server.host, server.port), timeout=10).close()
            record(kind, server.request("GET", "/healthz")[0] == 200)


def test_load_then_faults_with_flat_memory(request, lite0_files, small_photos, reference):
    scale = 10 if request.config.getoption("--serve-long") else 1
    # (all these clients share 127.0.0.1: the per-client cap, tested in test_serve_network.py,
    # is set above their number)
    with Server(lite0_files["int8.tflite"], "--workers", "2", "--max-client-requests", "64") as s:
        # 1. Load: 960 requests from 16 keep-alive clients, no error of any kind.
        errors, answered = [], []
        seconds = run_clients(16, good_client, s, small_photos, reference, LOAD_EACH * scale, errors, answered)
        assert not errors, errors[:5]
        assert len(answered) == 16 * LOAD_EACH * scale
        print(f"\nload: {len(answered)} requests, 16 clients, {len(answered) / seconds:.0f} requests/s")
        warm_rss = s.rss()
        # 2. Faults among good clients: every good request still answered exactly.
        errors, answered, outcomes = [], [], []
        faults = threading.Thread(target=run_clients, args=(4, fault_client, s, small_photos, reference,
                                                             FAULT_ROUNDS * scale, outcomes))
        faults.start()
        run_clients(8, good_client, s, small_photos, reference, GOOD_EACH * scale, errors, answered)
        faults.join(600)
        assert not errors, errors[:5]
        bad = [o for o in outcomes if not o[1]]
        assert not bad, bad[:5]
        assert len(outcomes) == 4 * FAULT_ROUNDS * scale and len(answered) == 8 * GOOD_EACH * scale
        # 3. Still healthy, nothing restarted, memory flat over the whole run.
        end_rss = s.rss()
        total = s.metric("effnet_http_requests_total", {"route": "/v1/classify", "status": "200"})
        good_requests = (16 * LOAD_EACH + 8 * GOOD_EACH) * scale
        assert total >= good_requests        # over 5,000 requests in all, with the abusive ones
        assert s.request("GET", "/healthz")[0] == 200
        assert s.metric("effnet_worker_restarts_total") == 0 and s.metric("effnet_classify_held") == 0
        print(f"faults: {len(outcomes)} abusive clients among {len(answered)} good requests; "
              f"RSS (server + workers) {warm_rss / 1e6:.1f} MB -> {end_rss / 1e6:.1f} MB "
              f"after {int(total)} answered classifications")
        assert abs(end_rss - warm_rss) <= 0.10 * warm_rss
    assert s.code == 0
    assert "Traceback" not in s.stderr
    # One access line per HTTP request: the good ones, 6 of the 9 abuses POST a request
    # (an aborted upload is logged as 499), PUT is one more; non-HTTP bytes and hang-ups are not.
    lines, per_kind = s.stderr.splitlines(), 4 * FAULT_ROUNDS // 9 * scale
    assert sum('"POST /v1/classify' in line for line in lines) == good_requests + 6 * per_kind
    assert sum('"PUT /v1/classify' in line and '" 405 ' in line for line in lines) == per_kind
    assert sum('"POST /v1/classify' in line and '" 499 ' in line for line in lines) == per_kind
