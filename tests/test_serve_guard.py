"""effnet-serve against slow, idle, greedy and unauthorised clients: real sockets on loopback
(other clients take other 127.0.0.0/8 addresses), every wait bounded."""
from __future__ import annotations

import hmac
import json
import socket
import threading
import time

import pytest

from tests_helpers import require_module

require_module("uvicorn", "effnet-serve needs the 'serve' extra")

from serve_helpers import Server, SlowClients, in_network_namespace, json_body, status_of  # noqa: E402
from tests_helpers import run_module, wait_for  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and after how long."""
    start, chunks = time.monotonic(), []
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except socket.timeout:
        raise AssertionError(f"the server kept the connection open for more than {limit} s") from None
    except ConnectionResetError:
        pass
    return b"".join(chunks), time.monotonic() - start


def test_slow_clients_cannot_lock_the_others_out(model, photo):
    """Under `ulimit -n 1024`, 1,100 connections trickle their headers one byte a second while
    other clients classify: at least 99 % of those answers are right and within 2 s, and every
    slow connection is closed by its deadline (or earlier, to make room)."""
    deadline = 4.0
    with Server(model, "--workers", "2", "--header-timeout", deadline, open_files=1024) as s:
        status, _, described = s.request("GET", "/v1/model")
        limits = described["limits"]
        assert status == 200 and limits["fd_limit"] == 1024 and limits["max_connections"] < 1024, limits
        status, _, reference = s.classify(photo)
        assert status == 200
        results: list[tuple[bool, float]] = []

        def good_client():
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    status, _, body = s.classify(photo, "?top_k=1")
                    ok = status == 200 and body["categories"][0] == reference["categories"][0]
                except OSError:
                    ok = False
                results.append((ok, time.monotonic() - started))

        with SlowClients(s.host, s.port, 1100, every=1.0, source="127.0.0.2") as slow:
            assert slow.refused_at_connect == 0 and len(slow.opened) == 1100
            stop_at = time.monotonic() + deadline + 2
            clients = [threading.Thread(target=good_client) for _ in range(3)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            wait_for(lambda: slow.open_count() == 0, deadline + 10, "every slow connection closed")
            lasted = sorted(slow.closed.values())
            timed_out = [i for i, reply in slow.replies.items() if status_of(reply) == 408]
        good = [ok and seconds <= 2 for ok, seconds in results]
        print(f"\nslow clients: {len(slow.opened)} opened, {len(timed_out)} closed with 408 by the deadline "
              f"({deadline:g} s), the rest to make room; longest open {lasted[-1]:.2f} s; good requests "
              f"{sum(good)}/{len(good)} right within 2 s, slowest {max(s for _, s in results):.2f} s")
        assert len(good) >= 30 and sum(good) >= 0.99 * len(good), \
            f"{sum(good)} of {len(good)} good requests answered right within 2 s"
        assert lasted[-1] <= deadline + 1.5, f"a slow connection lasted {lasted[-1]:.1f} s"
        assert len(timed_out) >= 500 and "--header-timeout" in json_body(slow.replies[timed_out[0]])["error"]
        assert s.metric("effnet_connections_timed_out_total", {"phase": "headers"}) >= len(timed_out)
        assert s.metric("effnet_connections_open") <= 3
    assert s.code == 0


def test_silent_idle_and_trickling_connections_are_closed(model):
    """A connection that sends nothing gets 408 at --header-timeout; an idle kept-alive one is
    closed at --keep-alive-timeout; one that trickles bytes after its answer gets 408 too."""
    with Server(model, "--workers", "1", "--header-timeout", "2", "--keep-alive-timeout", "1") as s:
        outcomes = {}

        def silent():
            with socket.create_connection((s.host, s.port)) as sock:
                outcomes["silent"] = read_until_closed(sock, 10)

        def answered(sock) -> bytes:
            """A kept-alive /healthz: its whole answer, the connection left open."""
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += sock.recv(65536)
            return answer

        def idle():
            with socket.create_connection((s.host, s.port)) as sock:
                answer = answered(sock)
                outcomes["idle"] = (answer, *read_until_closed(sock, 10))

        def trickle():
            with socket.create_connection((s.host, s.port)) as sock:
                answered(sock)
                started = time.monotonic()
                sock.setblocking(False)
                reply, sent = b"", 0
                while time.monotonic() - started < 10:
                    try:                            # a next request, one byte every 0.4 s
                        sock.send(SlowClients.HEAD[sent:sent + 1] or b"a")
                        sent += 1
                    except OSError:
                        break
                    time.sleep(0.4)
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    reply += data
                    if not data:
                        break
                outcomes["trickle"] = (reply, time.monotonic() - started)

        threads = [threading.Thread(target=f) for f in (silent, idle, trickle)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        reply, seconds = outcomes["silent"]
        assert status_of(reply) == 408 and 1.5 <= seconds <= 4, (reply, seconds)
        answer, rest, seconds = outcomes["idle"]
        assert status_of(answer) == 200 and rest == b"" and 0.8 <= seconds <= 3, (answer, rest, seconds)
        reply, seconds = outcomes["trickle"]
        assert status_of(reply) == 408 and 1.5 <= seconds <= 4.5, (reply, seconds)
        assert s.metric("effnet_connections_timed_out_total", {"phase": "idle"}) >= 1
        assert s.metric("effnet_connections_timed_out_total", {"phase": "headers"}) >= 2
    assert s.code == 0


def test_a_full_server_makes_room_but_never_drops_a_request(model, photo):
    """At --max-connections, a newcomer closes the connection waiting longest for its headers;
    when every connection is running a request it is refused (503), and those requests finish."""
    with Server(model, "--workers", "1", "--max-connections", "4", "--max-queue", "4") as s:
        def start_upload():
            """A classify request whose headers are in and whose body is on its way: the
            server's "100 Continue" says the app is reading it."""
            sock = socket.create_connection((s.host, s.port), timeout=30)
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(photo))
            assert b" 100 " in sock.recv(65536)
            sock.sendall(photo[:100])
            return sock

        def healthz_then_close() -> int:
            with socket.create_connection((s.host, s.port), timeout=30) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return status_of(read_until_closed(sock, 5)[0])

        uploads = [start_upload(), start_upload()]
        silent = [socket.create_connection((s.host, s.port), timeout=30) for _ in range(2)]
        assert healthz_then_close() == 200              # the 5th: the older silent one makes room
        reply, _ = read_until_closed(silent[0], 5)
        assert status_of(reply) == 503
        uploads += [start_upload(), start_upload()]      # the 4th of these four closes the other
        assert status_of(read_until_closed(silent[1], 5)[0]) == 503
        with socket.create_connection((s.host, s.port), timeout=30) as newcomer:
            newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            reply, _ = read_until_closed(newcomer, 5)
        assert status_of(reply) == 503 and b"retry-after: 1" in reply.lower()
        assert "limit of 4 connections" in json_body(reply)["error"]
        for sock in uploads:                             # the four admitted requests are answered
            sock.sendall(photo[100:])
            reply = b""
            while b"}" not in reply:
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
            assert status_of(reply) == 200 and json_body(reply)["categories"], reply
            sock.close()
        for sock in silent:
            sock.close()
        assert s.metric("effnet_connections_evicted_total", {"phase": "headers"}) == 2
        assert s.metric("effnet_connections_refused_total") == 1
    assert s.code == 0


def test_token_and_rate_limit(model, photo, token_file):
    """/v1/* needs the token (401 + WWW-Authenticate otherwise), /healthz and the page do not;
    a client over --rate-limit gets 429 + Retry-After while another address is served."""
    with Server(model, "--workers", "1", "--token-file", token_file, "--protect-metrics",
                "--rate-limit", "50/s") as s:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        conn = s.connection(source="127.0.0.3")
        ask = lambda method, path, headers=None, body=None: s.request(method, path, body, headers, conn)  # noqa: E731
        status, headers, body = ask("GET", "/v1/model")
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="effnet-serve"', headers
        assert "Authorization: Bearer" in body["error"]
        for wrong in ("Bearer " + TOKEN[:-1] + "x", "Bearer " + TOKEN[:-1], "Basic " + TOKEN, "Bearer"):
            status, headers, body = ask("GET", "/v1/model", {"Authorization": wrong})
            assert status == 401 and headers["www-authenticate"].startswith("Bearer realm="), (wrong, headers)
        assert 'error="invalid_token"' in s.request("GET", "/v1/model", headers={"Authorization": "Bearer nope"})[1][
            "www-authenticate"]
        status, headers, body = s.classify(photo)        # an upload without the token is not read
        assert status == 401 and headers.get("connection") == "close"
        status, _, body = ask("GET", "/v1/model", auth)
        assert status == 200 and body["limits"]["auth"] == "token" and body["limits"]["rate_limit_per_s"] == 50
        status, _, body = ask("POST", "/v1/classify", {**auth, "Content-Type": "image/jpeg"}, photo)
        assert status == 200 and body["categories"]
        assert s.request("GET", "/healthz")[0] == 200 and s.request("GET", "/")[0] == 200
        assert s.request("GET", "/metrics")[0] == 401                   # --protect-metrics
        assert s.request("GET", "/metrics", headers=auth)[0] == 200
        conn.close()

        greedy, codes, retry = s.connection(source="127.0.0.4"), [], set()
        started = time.monotonic()
        for _ in range(200):
            status, headers, body = s.request("GET", "/v1/model", headers=auth, conn=greedy)
            codes.append(status)
            if status == 429:
                retry.add(headers["retry-after"])
                assert "rate limit" in body["error"]
        elapsed = time.monotonic() - started
        assert set(codes) == {200, 429} and retry == {"1"}, (set(codes), retry)
        assert codes.count(200) <= 50 + 50 * elapsed + 1, (codes.count(200), elapsed)
        assert s.request("GET", "/v1/model", headers=auth, conn=s.connection(source="127.0.0.5"))[0] == 200
        assert s.request("GET", "/healthz", conn=greedy)[0] == 200      # health checks are not limited
        greedy.close()
    assert s.code == 0


def test_token_comparison_is_constant_time(monkeypatch):
    """Every guess goes through hmac.compare_digest on two SHA-256 digests: neither how much
    of the token a guess got right nor its length changes what is compared."""
    from effnet_lite.apps.serve.guard import Token
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = Token(TOKEN)
    assert [token.matches(g) for g in (TOKEN, TOKEN[:-1] + "x", "x", TOKEN * 3)] == [True, False, False, False]
    assert seen == [(32, 32)] * 4


def test_refusals_at_start(model, token_file, tmp_path):
    """A non-loopback --host without a token, an unusable token file, a bad --rate-limit or a
    --max-connections the descriptor limit cannot hold: one line, exit 2, before listening."""
    loose = tmp_path / "loose"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    cases = [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 lets other machines in: give --token-file"),
        (["--token-file", loose], f"the token file {loose} is readable by every user"),
        (["--token-file", short], f"the token in {short} has 3 characters"),
        (["--token-file", tmp_path / "none"], f"cannot read the token file {tmp_path / 'none'}: No such file"),
        (["--token-file", token_file, "--no-auth"], "--no-auth and --token-file contradict"),
        (["--rate-limit", "fast"], "--rate-limit 'fast': give requests per second"),
        (["--max-connections", "100000000"], "descriptor limit"),
        (["--trust-proxy", "proxy.lan"], "--trust-proxy 'proxy.lan': 'proxy.lan' is not an IP address"),
        (["--unauthenticated-rate", "1/s"], "--unauthenticated-rate needs --token-file"),
        (["--token-file", token_file, "--unauthenticated-rate", "lots"], "--unauthenticated-rate 'lots': give"),
    ]
    for args, expected in cases:
        code, out, err = run_module("effnet_lite.apps.serve.cli", "--model", model, "--port", "0", *args, timeout=60)
        lines = err.strip().splitlines()      # (argparse's errors follow its usage lines)
        assert code == 2 and expected in lines[-1] and "Traceback" not in err, (args, err)
        assert len(lines) == 1 or lines[0].startswith("usage:"), err
        assert out == ""


def test_no_auth_lets_a_non_loopback_host_serve(model):
    """--host 0.0.0.0 --no-auth starts and answers /v1/model without a token (in a network
    namespace of its own, which has nothing but loopback: the test exposes nothing)."""
    banner, err, answer = in_network_namespace(model, "--host", "0.0.0.0", "--no-auth", "--workers", "1",
                                               path="/v1/model")
    assert banner.startswith("effnet-serve: http://0.0.0.0:"), (banner, err)
    status, body = answer
    assert status == 200 and json.loads(body)["limits"]["auth"] == "none", (answer, err)
    assert "cleartext" not in err          # no token, nothing to warn about
