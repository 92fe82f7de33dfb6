"""effnet-serve's API with real clients: answers equal effnet-infer's, every error a small JSON
object with the right status, limits enforced before the body is read, clean stop."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests_helpers import require_module, unavailable

require_module("uvicorn", "effnet-serve needs the 'serve' extra")

from effnet_lite import Classifier  # noqa: E402
from effnet_lite.apps.procs import processes  # noqa: E402
from effnet_lite.cpu import int8_class  # noqa: E402

from conftest import DEV_DIR  # noqa: E402
from serve_helpers import Server, json_body, status_of  # noqa: E402
from tests_helpers import BLOCKER, run_module, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def photos(lite0_files):
    """Real photos: scikit-image's, and 12 of the dev photos where they are."""
    found = sorted(lite0_files["photos"].glob("*.jpg"))
    if DEV_DIR.is_dir():
        found += sorted(DEV_DIR.glob("*.JPEG"))[::17]
    return found


@pytest.fixture(scope="module")
def server(model):
    with Server(model, "--workers", "2") as s:
        yield s
    assert s.code == 0, s.stderr


def infer_json(model, photos, *args) -> dict:
    code, out, err = run_module("effnet_lite.apps.infer", *photos, "--model", model, "--json", *args)
    assert code == 0, err
    return {os.path.basename(r["source"]): r["categories"] for r in map(json.loads, out.splitlines())}


def test_answers_equal_effnet_infer(server, model, photos):
    """Raw bodies, multipart forms (requests) and the documented curl lines answer exactly what
    effnet-infer prints for the same files, top_k and threshold honoured."""
    import requests
    expected = infer_json(model, photos)
    expected_k3 = infer_json(model, photos, "--top-k", "3", "--threshold", "0.05")
    for photo in photos:
        status, _, body = server.classify(photo.read_bytes(), f"?name={photo.name}")
        assert status == 200, body
        assert body["categories"] == expected[photo.name], photo.name
        assert body["source"] == photo.name and body["preprocess_ms"] > 0 and body["inference_ms"] > 0
        with open(photo, "rb") as f:
            r = requests.post(f"{server.url}v1/classify", params={"top_k": 3, "threshold": 0.05},
                              files={"image": (photo.name, f, "image/jpeg")}, timeout=60)
        assert r.status_code == 200 and r.json()["categories"] == expected_k3[photo.name], r.text
        assert r.json()["source"] == photo.name
    if shutil.which("curl"):
        photo = photos[0]
        raw = subprocess.run(["curl", "-s", "-H", "Content-Type: image/jpeg", "--data-binary", f"@{photo}",
                              f"{server.url}v1/classify?top_k=3"], capture_output=True, text=True, timeout=60)
        form = subprocess.run(["curl", "-s", "-F", f"image=@{photo}", f"{server.url}v1/classify"],
                              capture_output=True, text=True, timeout=60)
        assert json.loads(raw.stdout)["categories"] == expected[photo.name][:3]
        assert json.loads(form.stdout)["categories"] == expected[photo.name]


def test_model_health_and_metrics(server, model, photos):
    status, _, info = server.request("GET", "/v1/model")
    with Classifier.from_file(model) as clf:
        digest = clf.backend.digest
    assert status == 200
    assert info["digest"] == digest and digest.startswith("sha256:")
    assert (info["variant"], info["precision"], info["input_size"], info["labels"]) == ("lite0", "int8", 224, 1000)
    assert (info["backend"], info["workers"], info["threads"], info["model"]) == ("litert", 2, 1, model.name)
    assert info["cpu_int8_class"] == int8_class().name and info["int8_caveat"] is None
    assert server.request("GET", "/healthz")[:3:2] == (200, {"status": "ok", "workers_ready": 2, "workers": 2,
                                                              "queue_depth": 0})
    ok_before = server.metric("effnet_http_requests_total", {"route": "/v1/classify", "status": "200"}, 0)
    bad_before = server.metric("effnet_http_requests_total", {"route": "/v1/classify", "status": "400"}, 0)
    inferred_before = server.metric("effnet_inference_seconds_count")
    for photo in photos[:3]:
        assert server.classify(photo.read_bytes())[0] == 200
    assert server.classify(b"not an image")[0] == 400
    assert server.metric("effnet_http_requests_total", {"route": "/v1/classify", "status": "200"}) == ok_before + 3
    assert server.metric("effnet_http_requests_total", {"route": "/v1/classify", "status": "400"}) == bad_before + 1
    assert server.metric("effnet_inference_seconds_count") == inferred_before + 3
    assert server.metric("effnet_preprocess_seconds_count") == inferred_before + 3
    assert server.metric("effnet_http_request_duration_seconds_bucket",
                         {"route": "/v1/classify", "le": "+Inf"}) >= ok_before + 4
    assert server.metric("effnet_queue_depth") == 0 and server.metric("effnet_workers_ready") == 2
    assert server.metric("effnet_worker_resident_memory_bytes", {"worker": "0"}) > 10e6
    assert server.metric("process_resident_memory_bytes") > 10e6


def test_errors_are_small_json(server, photos):
    jpeg = photos[0].read_bytes()
    cases = [
        (("POST", "/v1/classify?name=notes.txt", b"just some text", {"Content-Type": "image/jpeg"}), 400,
         "notes.txt: not an image"),
        (("POST", "/v1/classify", jpeg[: len(jpeg) // 3], {"Content-Type": "image/jpeg"}), 400, "upload:"),
        (("POST", "/v1/classify", b"", {"Content-Type": "image/jpeg"}), 400, "empty input"),
        (("POST", "/v1/classify", jpeg, {"Content-Type": "text/plain"}), 415, "'text/plain' is not accepted"),
        (("POST", "/v1/classify", jpeg, {"Content-Type": "application/x-www-form-urlencoded"}), 415, "multipart"),
        (("GET", "/v1/classify", None, {}), 405, "GET is not allowed"),
        (("DELETE", "/v1/model", None, {}), 405, "DELETE is not allowed"),
        (("GET", "/no/such/thing", None, {}), 404, "/no/such/thing"),
        (("POST", "/v1/classify?top_k=0", jpeg, {"Content-Type": "image/jpeg"}), 400, "top_k"),
        (("POST", "/v1/classify?top_k=1001", jpeg, {"Content-Type": "image/jpeg"}), 400, "from 1 to 1000"),
        (("POST", "/v1/classify?top_k=x", jpeg, {"Content-Type": "image/jpeg"}), 400, "top_k"),
        (("POST", "/v1/classify?threshold=nan", jpeg, {"Content-Type": "image/jpeg"}), 400, "threshold"),
        (("POST", "/v1/classify?threshold=1.5", jpeg, {"Content-Type": "image/jpeg"}), 400, "threshold"),
        (("POST", "/v1/classify", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
          {"Content-Type": "multipart/form-data; boundary=x"}), 400, "no file field"),
        (("POST", "/v1/classify", b"garbage", {"Content-Type": "multipart/form-data"}), 400, "multipart"),
    ]
    for (method, path, body, headers), status, words in cases:
        got, reply_headers, reply = server.request(method, path, body, headers)
        assert got == status, (path, headers, reply)
        assert isinstance(reply, dict) and reply["status"] == status and words in reply["error"], reply
        assert len(json.dumps(reply)) < 400 and "\n" not in reply["error"] and "Traceback" not in reply["error"]
        if status == 405:
            assert "allow" in reply_headers


def test_access_log_lines_cannot_be_forged(server):
    assert server.request("GET", "/no/such%0Afake-line%0D%1B[31m")[0] == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "fake-line" not in "".join(server._err):
        time.sleep(0.1)
    lines = "".join(server._err).splitlines()
    (logged,) = [line for line in lines if "fake-line" in line]
    assert '"GET /no/such\\nfake-line\\r\\x1b[31m HTTP/1.1" 404' in logged, logged
    assert not any(line.startswith("fake-line") for line in lines)


def test_oversize_refused_before_the_body_is_read(server, photos):
    # Declared too large: 413 after 64 KiB of a claimed 50 MB, and the connection is closed.
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    reply = server.raw(head + b"\xff" * 65536)
    assert status_of(reply) == 413, reply[:200]
    assert "20 MB limit" in json_body(reply)["error"]
    assert b"connection: close" in reply.lower()
    # Not declared (chunked): refused once the limit is passed, long before the sender is done.
    chunk = b"\0" * (1 << 20)
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent, reply = 0, b""
        try:
            for _ in range(200):        # up to 200 MB, if the server never stopped us
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = sock.recv(65536)
        except ConnectionResetError:
            pass
    assert sent < 60 << 20, "the server kept reading far past the limit"
    assert status_of(reply) == 413 and b"20 MB limit" in reply, reply[:200]
    # A good request right after is answered: the server is unharmed.
    assert server.classify(photos[0].read_bytes())[0] == 200


def test_bad_model_port_and_missing_extra_are_one_line_errors(tmp_path, model):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"TFL3" + os.urandom(2000))
    code, out, err = run_module("effnet_lite.apps.serve.cli", "--model", bad, "--port", "0", timeout=120)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken.tflite" in err and "Traceback" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out, err = run_module("effnet_lite.apps.serve.cli", "--model", model, "--port", taken.getsockname()[1], timeout=120)
    assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1, err
    script = BLOCKER.replace('"tensorflow"}', '"tensorflow", "uvicorn"}') + (
        "import sys; from effnet_lite.apps.serve.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "--model", str(model)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "effnet-lite-edge[serve]" in proc.stderr, proc.stderr
    code, out, err = run_module("effnet_lite.apps.serve.cli", "--help")
    assert code == 0 and "curl" in out and "/v1/classify" in out and "--max-queue" in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stop_signal_finishes_the_request_in_flight(model, photos, sig):
    """systemd's stop (SIGTERM) or a terminal's Ctrl-C (SIGINT), to the whole process group,
    while an upload is half sent: the request is still answered correctly, then the server
    and its workers exit with status 0."""
    jpeg = photos[0].read_bytes()
    with Server(model, "--workers", "2") as s:
        expected = s.classify(jpeg)[2]
        workers = s.workers()
        assert len(workers) == 2
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(jpeg)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection((s.host, s.port), timeout=60) as sock:
            sock.sendall(head + jpeg[:1000])
            wait_for(lambda: s.metric("effnet_uploads_reading") == 1, 10, "the upload being read")
            os.killpg(s.proc.pid, sig)       # as a terminal and systemd's default KillMode do
            wait_for(lambda: "stopping; finishing" in "".join(s._err), 10, "the server's stop message")
            sock.sendall(jpeg[1000:])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        code = s.stop()
    assert status_of(reply) == 200 and json_body(reply)["categories"] == expected["categories"]
    assert code == 0, s.stderr
    # (1 or 2: the connection of the last /metrics poll may not be closed yet)
    assert re.search(r"stopping; finishing [12] request\(s\) in flight", s.stderr) and "stopped after" in s.stderr
    assert "Traceback" not in s.stderr
    assert not [p for p in processes() if p.pid in workers and p.state != "Z"]


def test_busy_timeout_and_stuck_worker(model, photos):
    """One worker, frozen (SIGSTOP): the next request waits and gets 504 at its deadline, a
    queued one too, and one past the queue gets 503 with Retry-After at once. The frozen
    worker is then replaced, and the service answers again."""
    jpeg = photos[0].read_bytes()
    with Server(model, "--workers", "1", "--max-queue", "1", "--timeout", "2") as s:
        assert s.classify(jpeg)[0] == 200
        (worker,) = s.workers()
        os.kill(worker, signal.SIGSTOP)
        replies = {}

        def ask(name):
            replies[name] = s.classify(jpeg)
        running = threading.Thread(target=ask, args=("running",))
        running.start()
        wait_for(lambda: s.metric("effnet_classify_held") == 1, 10, "the first request admitted")
        queued = threading.Thread(target=ask, args=("queued",))
        queued.start()
        wait_for(lambda: s.metric("effnet_classify_held") == 2, 10, "the second request admitted")
        assert s.metric("effnet_queue_depth") == 1
        t0 = time.monotonic()
        status, headers, body = s.classify(jpeg)
        assert status == 503 and headers.get("retry-after") == "1" and "busy" in body["error"]
        assert time.monotonic() - t0 < 1.5
        running.join(10)
        queued.join(10)
        for name in ("running", "queued"):
            status, _, body = replies[name]
            assert status == 504 and "2 s" in body["error"], (name, body)
        deadline = time.monotonic() + 30        # the stuck worker is killed 5 s after the timeout
        while time.monotonic() < deadline and s.metric("effnet_worker_restarts_total") < 1:
            time.sleep(0.5)
        while time.monotonic() < deadline and s.metric("effnet_workers_ready") < 1:
            time.sleep(0.2)
        assert s.metric("effnet_worker_restarts_total") == 1
        status, _, body = s.classify(jpeg)
        assert status == 200, body
        assert s.workers() != [worker]
    assert s.code == 0
    assert "stuck" in s.stderr and "starting a new one" in s.stderr


def test_upload_that_stalls_gets_408(model, photos):
    """Half an upload, then nothing: 408 at the request's deadline, the connection closed,
    and the service still answers."""
    jpeg = photos[0].read_bytes()
    with Server(model, "--workers", "1", "--timeout", "1") as s:
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
        t0 = time.monotonic()
        with socket.create_connection((s.host, s.port), timeout=30) as sock:
            sock.sendall(head + jpeg[:len(jpeg) // 2])
            reply = b""
            while chunk := sock.recv(65536):        # until the server closes it
                reply += chunk
        waited = time.monotonic() - t0
        assert status_of(reply) == 408, reply[:300]
        assert "did not arrive within the request timeout (1 s)" in json_body(reply)["error"]
        assert b"connection: close" in reply.lower() and 0.9 < waited < 20, waited
        assert s.classify(jpeg)[0] == 200
    assert s.code == 0 and '" 408 ' in s.stderr


def test_worker_dies_mid_request(model, photos):
    """The worker running a request is killed: that request gets 500 naming the cause, the
    worker is replaced, and the next request is answered."""
    jpeg = photos[0].read_bytes()
    with Server(model, "--workers", "1") as s:
        expected = s.classify(jpeg)[2]["categories"]
        (victim,) = s.workers()
        os.kill(victim, signal.SIGSTOP)          # hold it while the request reaches it
        replies = []
        asking = threading.Thread(target=lambda: replies.append(s.classify(jpeg)))
        asking.start()
        wait_for(lambda: s.metric("effnet_classify_running") == 1, 10, "the request at the worker")
        os.kill(victim, signal.SIGKILL)
        asking.join(30)
        (status, _, body), = replies
        assert status == 500 and "the worker handling this request stopped" in body["error"], body
        wait_for(lambda: s.metric("effnet_workers_ready") == 1 and victim not in s.workers(), 30,
                 "a replacement worker")
        status, _, body = s.classify(jpeg)
        assert status == 200 and body["categories"] == expected
        assert s.metric("effnet_worker_restarts_total") == 1 and s.metric("effnet_classify_running") == 0
    assert s.code == 0 and f"(pid {victim}) was killed by signal 9" in s.stderr


def test_errors_outside_the_routes_leave_one_line(capsys):
    """uvicorn reports an exception that escapes the app (e.g. from the access log) as
    "Exception in ASGI application": one line of ours, the traceback only with -v; one the
    app's handler already logged is not logged twice."""
    import logging
    from effnet_lite.apps.serve.app import log_internal_error
    from effnet_lite.apps.serve.cli import quiet_uvicorn_logs

    def report(exc):
        try:
            raise exc
        except Exception:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")
    for verbose in (False, True):
        quiet_uvicorn_logs(verbose)
        report(OSError(28, "No space left on device"))
        err = capsys.readouterr().err
        assert err.startswith("effnet-serve: internal error outside the routes: OSError: "
                              "[Errno 28] No space left on device\n"), err
        assert ("Traceback (most recent call last)" in err) == verbose and (len(err.splitlines()) == 1) != verbose
        handled = ValueError("a bug in a route")
        log_internal_error("on POST /v1/classify", handled, False)
        report(handled)
        assert capsys.readouterr().err == ("effnet-serve: internal error on POST /v1/classify: "
                                           "ValueError: a bug in a route\n")
    quiet_uvicorn_logs(False)


def test_crashed_worker_is_replaced(model, photos):
    jpeg = photos[0].read_bytes()
    with Server(model, "--workers", "2") as s:
        expected = s.classify(jpeg)[2]["categories"]
        victim = s.workers()[0]
        os.kill(victim, signal.SIGKILL)          # as a crash in a native decoder would
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (s.metric("effnet_worker_restarts_total") == 1
                                                   and s.metric("effnet_workers_ready") == 2):
            time.sleep(0.2)
        assert s.metric("effnet_workers_ready") == 2 and victim not in s.workers()
        for _ in range(6):
            status, _, body = s.classify(jpeg)
            assert status == 200 and body["categories"] == expected
        assert s.request("GET", "/healthz")[0] == 200
    assert s.code == 0
    assert f"(pid {victim}) was killed by signal 9" in s.stderr


def test_https_with_a_self_signed_certificate(tmp_path, model, photos):
    """--tls-cert/--tls-key, as the documented camera-from-another-machine recipe makes them."""
    import http.client
    import ssl
    if not shutil.which("openssl"):
        unavailable("no openssl command to make a certificate")
    key, cert = tmp_path / "pi.key", tmp_path / "pi.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    jpeg = photos[0].read_bytes()
    with Server(model, "--workers", "1", "--tls-cert", cert, "--tls-key", key) as s:
        assert s.url.startswith("https://127.0.0.1:")
        conn = http.client.HTTPSConnection(s.host, s.port, timeout=60,
                                           context=ssl.create_default_context(cafile=str(cert)))
        conn.request("POST", "/v1/classify", jpeg, {"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["categories"]
        conn.close()
    assert s.code == 0
    code, out, err = run_module("effnet_lite.apps.serve.cli", "--model", model, "--port", "0", "--tls-cert", key,
                                "--tls-key", key, timeout=120)
    assert code == 2 and "TLS certificate or key" in err and len(err.strip().splitlines()) == 1, err


def test_readme_systemd_unit_is_valid(tmp_path):
    """The unit file of docs/serve.md, checked by systemd itself (with ExecStart pointed at this
    machine's effnet-serve and User at an existing user)."""
    from conftest import ROOT
    if not shutil.which("systemd-analyze"):
        unavailable("no systemd-analyze here (apt-get install systemd)")
    readme = (ROOT / "docs" / "serve.md").read_text()
    unit = re.search(r"```ini\n(\[Unit\].*?)```", readme, re.S).group(1)
    assert "effnet-serve --model" in unit and "KillMode=mixed" in unit
    here = shutil.which("effnet-serve") or unavailable("effnet-serve is not on PATH")
    unit = re.sub(r"ExecStart=\S+", f"ExecStart={here}", unit).replace("User=pi", "User=root")
    path = tmp_path / "effnet-serve.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "effnet-serve.service" in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_bench_service_mode(lite0_files, tmp_path, capsys):
    """effnet-bench --mode service runs both sides and reports the ratio and the added p50
    (the figures are the benchmark's to print, not asserted here)."""
    from effnet_lite.benchmarks import latency
    out = tmp_path / "service.json"
    assert latency.main([str(lite0_files["int8.tflite"]), "--mode", "service", "--data", str(lite0_files["photos"]),
                         "--workers", "1", "--rounds", "1", "--requests", "24", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["workers"] == 1 and row["clients"] == 2 and row["in_process_per_s"] > 0 and row["service_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["service_per_s"] / row["in_process_per_s"], rel=1e-9)
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    seq = report["sequential"]
    assert seq["added_p50_ms"] == pytest.approx(seq["service_p50_ms"] - seq["in_process_p50_ms"])
    guards = {row["setting"]: row for row in report["guards"]}
    assert set(guards) == {"unguarded", "guarded", "guarded + token + rate limit"}
    assert guards["unguarded"]["vs_unguarded"] == 1 and all(r["service_per_s"] > 0 for r in guards.values())
    assert guards["guarded"]["vs_unguarded"] == pytest.approx(
        guards["guarded"]["service_per_s"] / guards["unguarded"]["service_per_s"], rel=1e-9)
    checks = {row["setting"]: row["us_per_request"] for row in report["checks"]}
    assert len(checks) == 3 and all(us > 0 for us in checks.values()), checks
    printed = capsys.readouterr().out
    assert "service throughput / in-process" in printed and "HTTP adds" in printed
    assert "guarded / unguarded requests/s" in printed
    assert f"per-request checks: {max(checks.values()):.1f} us at worst" in printed


def test_a_changed_model_file_is_not_loaded_by_a_replacement(tmp_path, lite0_files, photos):
    """A worker replaced after the file changed on disk refuses it (the digest differs from
    the one the server checked at start), retries, and the others keep answering."""
    model = tmp_path / "model.tflite"
    shutil.copy(lite0_files["int8.tflite"], model)
    original, jpeg = model.read_bytes(), photos[0].read_bytes()
    with Server(model, "--workers", "2") as s:
        model.write_bytes(lite0_files["uint8.tflite"].read_bytes())     # another valid file of ours
        os.kill(s.workers()[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "changed on disk" not in "".join(s._err):
            time.sleep(0.2)
        assert "changed on disk since the server started; retrying" in "".join(s._err)
        status, _, health = s.request("GET", "/healthz")
        assert status == 200 and health["workers_ready"] == 1
        for _ in range(4):
            assert s.classify(jpeg)[0] == 200
        model.write_bytes(original)
        while time.monotonic() < deadline and s.metric("effnet_workers_ready") < 2:
            time.sleep(0.2)
        assert s.metric("effnet_workers_ready") == 2
    assert s.code == 0
