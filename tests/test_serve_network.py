"""effnet-serve on a shared network: who a request comes from (peer, trusted proxies, IPv6
networks), a rate limit no crowd of addresses can reset, requests without a token counted apart,
slow uploads and TLS handshakes that cannot starve the others. Real server on loopback, real
sockets (other clients take other 127.0.0.0/8 addresses)."""
from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import threading
import time

import pytest

from tests_helpers import require_module, unavailable

require_module("uvicorn", "effnet-serve needs the 'serve' extra")

from serve_helpers import Server, SlowClients, in_network_namespace, json_body, status_of  # noqa: E402
from tests_helpers import wait_for  # noqa: E402

from effnet_lite.apps.serve.clients import ClientAddresses, parse_proxies  # noqa: E402
from effnet_lite.apps.serve.guard import RateLimit  # noqa: E402

TOKEN = "network-test-token-0123456789abcdef"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the rules, driven directly -----------------------------------------------------------------
def test_a_crowd_of_addresses_does_not_reset_a_throttled_client():
    """A client throttled at 1 request/min stays throttled while 5,000 other addresses are seen
    within the minute (they share an overflow bucket, the table keeps its 4,096); once its bucket
    has refilled, forgetting it costs nothing and newcomers get buckets of their own again."""
    clock = Clock()
    limit = RateLimit(1 / 60, clock=clock)
    keys = ClientAddresses().key
    assert limit.wait(keys("198.51.100.7")) == 0 and limit.wait(keys("198.51.100.7")) > 0
    for i in range(5000):
        clock.now += 0.01
        limit.wait(keys(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
    assert len(limit.buckets) == 4096 and limit.overflowed == 5000 - 4095
    assert limit.wait(keys("198.51.100.7")) > 0, "the throttled client got a fresh bucket"
    clock.now += 61                                   # every bucket full again
    assert limit.wait(keys("203.0.113.1")) == 0 and limit.wait(keys("203.0.113.2")) == 0
    assert limit.overflowed == 5000 - 4095 and "203.0.113.2" in limit.buckets


def test_ipv6_clients_are_counted_by_network():
    """IPv6 keys are the client's /64 (or the --ipv6-prefix given); IPv4-mapped addresses are
    IPv4; ten addresses of one /64 share one bucket."""
    keys = ClientAddresses().key
    assert keys("2001:db8:1:2:aaaa::1") == keys("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert keys("2001:db8:1:3::1") != keys("2001:db8:1:2::1")
    assert ClientAddresses(ipv6_prefix=48).key("2001:db8:1:3::1") == "2001:db8:1::/48"
    assert keys("192.0.2.1") == "192.0.2.1"
    limit = RateLimit(1 / 60, clock=Clock())
    answers = [limit.wait(keys(f"2001:db8:1:2::{i:x}")) for i in range(1, 11)]
    assert answers[0] == 0 and all(a > 0 for a in answers[1:])
    assert limit.wait(keys("2001:db8:1:3::1")) == 0


def test_forwarded_headers_are_read_right_to_left_from_trusted_proxies_only():
    proxies = ClientAddresses(parse_proxies("127.0.0.1,10.0.0.0/8"))
    xff = lambda *values: [(b"x-forwarded-for", v.encode()) for v in values]  # noqa: E731
    assert ClientAddresses().client("127.0.0.1", xff("1.2.3.4")) == "127.0.0.1"      # no proxy trusted
    assert proxies.client("192.0.2.9", xff("1.2.3.4")) == "192.0.2.9"                # not a trusted peer
    assert proxies.client("127.0.0.1", xff("6.6.6.6, 198.51.100.9")) == "198.51.100.9"
    assert proxies.client("127.0.0.1", xff("6.6.6.6", "198.51.100.9, 10.1.2.3")) == "198.51.100.9"
    assert proxies.client("127.0.0.1", xff("10.0.0.5, 10.1.2.3")) == "10.0.0.5"      # all proxies: the farthest
    assert proxies.client("127.0.0.1", xff("6.6.6.6, not-an-address")) == "127.0.0.1"
    assert proxies.client("127.0.0.1", []) == "127.0.0.1"
    assert proxies.client("::ffff:127.0.0.1", xff("[2001:db8::5]:443")) == "2001:db8::5"
    rfc = ClientAddresses(parse_proxies("127.0.0.1"), "forwarded")
    forwarded = [(b"forwarded", b'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https'),
                 (b"x-forwarded-for", b"5.5.5.5")]
    assert rfc.client("127.0.0.1", forwarded) == "2001:db8::7"
    assert rfc.client("127.0.0.1", [(b"forwarded", b"for=unknown")]) == "127.0.0.1"


# -- the real server --------------------------------------------------------------------------------
def access_lines(server: Server) -> list[str]:
    return [line for line in server._err if '" ' in line and "HTTP/1.1" in line]


def test_forged_forwarded_for_changes_nothing_without_trust_proxy(model):
    """Without --trust-proxy, X-Forwarded-For changes neither the rate-limit key nor the access
    log; with --trust-proxy 127.0.0.1, the right-most address the proxy reports is the client,
    and a peer that is not the proxy cannot claim one."""
    with Server(model, "--workers", "1", "--rate-limit", "1/min") as s:
        conn = s.connection(source="127.0.0.6")
        codes = [s.request("GET", "/v1/model", headers={"X-Forwarded-For": f"192.0.2.{i}"}, conn=conn)[0]
                 for i in range(1, 6)]
        assert codes == [200, 429, 429, 429, 429], codes
        wait_for(lambda: len(access_lines(s)) >= 5, 5, "five access lines")
        assert all(line.startswith("127.0.0.6 ") for line in access_lines(s)), access_lines(s)
    with Server(model, "--workers", "1", "--rate-limit", "1/min", "--trust-proxy", "127.0.0.1") as s:
        proxy = s.connection(source="127.0.0.1")
        ask = lambda chain: s.request("GET", "/v1/model", headers={"X-Forwarded-For": chain}, conn=proxy)  # noqa: E731
        assert ask("6.6.6.6, 198.51.100.9")[0] == 200
        assert ask("7.7.7.7, 198.51.100.9")[0] == 429          # the same client, whatever it wrote
        assert ask("198.51.100.10")[0] == 200
        other = s.connection(source="127.0.0.9")                # not the proxy: its header is ignored
        assert s.request("GET", "/v1/model", headers={"X-Forwarded-For": "203.0.113.50"}, conn=other)[0] == 200
        assert s.request("GET", "/v1/model", headers={"X-Forwarded-For": "203.0.113.51"}, conn=other)[0] == 429
        wait_for(lambda: len(access_lines(s)) >= 5, 5, "five access lines")
        clients = [line.split()[0] for line in access_lines(s)]
        assert clients == ["198.51.100.9", "198.51.100.9", "198.51.100.10", "127.0.0.9", "127.0.0.9"], clients
        status, _, body = s.request("GET", "/v1/model", headers={"X-Forwarded-For": "198.51.100.11"}, conn=proxy)
        assert status == 200 and body["limits"]["trusted_proxies"] == ["127.0.0.1/32"], body


def test_a_throttled_client_stays_throttled_on_the_real_server(model):
    """Through a trusted proxy: a client throttled at 1/min is still refused after 5,000 other
    addresses have made requests, and ten addresses of one IPv6 /64 share one bucket."""
    with Server(model, "--workers", "1", "--rate-limit", "1/min", "--trust-proxy", "127.0.0.1") as s:
        proxy = s.connection(source="127.0.0.1")
        ask = lambda client: s.request("GET", "/v1/model", headers={"X-Forwarded-For": client}, conn=proxy)[0]  # noqa: E731
        assert [ask("198.51.100.7"), ask("198.51.100.7")] == [200, 429]
        started = time.monotonic()
        for i in range(5000):
            ask(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        took = time.monotonic() - started
        assert took < 50, f"5,000 requests took {took:.0f} s: the bucket may have refilled"
        status, headers, body = s.request("GET", "/v1/model", headers={"X-Forwarded-For": "198.51.100.7"}, conn=proxy)
        assert status == 429 and int(headers["retry-after"]) > 60 - took - 2, (status, headers, took)
        assert s.metric("effnet_rate_limit_clients") == 4096 and s.metric("effnet_rate_limit_overflow_total") >= 900
        v6 = [ask(f"2001:db8:1:2::{i:x}") for i in range(1, 11)]
        assert v6[0] in (200, 429) and v6[1:] == [429] * 9, v6      # (a full table may share the first)
        proxy.close()
    assert s.code == 0


def test_requests_without_the_token_cannot_spend_its_holders_allowance(model, tmp_path):
    """Behind one address (a NAT), 100 requests without the token are refused (401, then 429 at
    their own, stricter allowance); the token holder's 5 requests in the same second all pass."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with Server(model, "--workers", "1", "--token-file", token_file, "--rate-limit", "5/s") as s:
        stranger, holder = s.connection(source="127.0.0.8"), s.connection(source="127.0.0.8")
        codes = [s.request("GET", "/v1/model", headers={"Authorization": "Bearer wrong"}, conn=stranger)[0]
                 for _ in range(100)]
        assert codes[0] == 401 and codes.count(429) >= 90 and set(codes) == {401, 429}, codes
        auth = {"Authorization": f"Bearer {TOKEN}"}
        held = [s.request("GET", "/v1/model", headers=auth, conn=holder) for _ in range(5)]
        assert [h[0] for h in held] == [200] * 5, held
        assert held[0][2]["limits"]["unauthenticated_rate_per_s"] == 0.5
        assert s.request("GET", "/v1/model", headers=auth, conn=holder)[0] == 429    # its own limit holds
        stranger.close()
        holder.close()
    assert s.code == 0


def test_slow_uploaders_cannot_starve_good_clients(model, photo):
    """50 clients (50 addresses) each announce a 200 kB upload and send one byte a second, and
    start again when closed, for 30 s: at least 99 % of good requests get 200 within 2 s, and
    every slow upload ends in 408 (under --min-upload-rate)."""
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 200000\r\n\r\n")
    with Server(model, "--workers", "2") as s:
        status, _, reference = s.classify(photo, "?top_k=1")
        assert status == 200
        results: list[tuple[bool, float]] = []

        def good_client(n):
            conn = s.connection(source=f"127.0.3.{n + 1}")
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    status, _, body = s.classify(photo, "?top_k=1", conn=conn)
                    ok = status == 200 and body["categories"] == reference["categories"]
                except OSError:
                    ok = False
                    conn.close()
                    conn = s.connection(source=f"127.0.3.{n + 1}")
                results.append((ok, time.monotonic() - started))
                time.sleep(0.05)
            conn.close()

        sources = [f"127.0.4.{i + 1}" for i in range(50)]
        with SlowClients(s.host, s.port, 50, head=head, trickle=b"x", sources=sources, reopen=True) as slow:
            stop_at = time.monotonic() + 30
            clients = [threading.Thread(target=good_client, args=(n,)) for n in range(3)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            held = s.metric("effnet_classify_held")
        ended = [slow.replies.get(i, b"") for i in slow.closed]
        statuses = [status_of(r) for r in ended]
        good = [ok and seconds <= 2 for ok, seconds in results]
        print(f"\nslow uploads: {len(slow.opened)} opened, {len(ended)} ended ({statuses.count(408)} with 408); "
              f"good requests {sum(good)}/{len(good)} right within 2 s, slowest {max(t for _, t in results):.2f} s")
        assert len(good) >= 100 and sum(good) >= 0.99 * len(good), f"{sum(good)} of {len(good)}"
        assert len(ended) >= 300 and statuses.count(408) == len(ended), set(statuses)
        assert "--min-upload-rate" in json_body(ended[0])["error"]
        assert held <= 2
        assert s.metric("effnet_uploads_refused_total", {"reason": "too_slow"}) >= len(ended)
    assert s.code == 0


def test_one_client_holds_a_few_places_at_most(model, photo):
    """--max-client-requests 2: a third upload of one client in progress gets 429 at once, while
    another client is served; when one finishes, the client may send again."""
    with Server(model, "--workers", "1", "--max-client-requests", "2") as s:
        head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: %d\r\n\r\n" % len(photo))
        import socket
        uploads = []
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.10", 0))
            sock.connect((s.host, s.port))
            sock.sendall(head + photo[:100])
            uploads.append(sock)
        wait_for(lambda: s.metric("effnet_uploads_reading") == 2, 10, "two uploads being read")
        third = s.connection(source="127.0.0.10")
        status, headers, body = s.classify(photo, conn=third)
        assert status == 429 and "--max-client-requests" in body["error"] and headers["retry-after"] == "1"
        assert s.classify(photo, conn=s.connection(source="127.0.0.11"))[0] == 200
        uploads[0].sendall(photo[100:])
        reply = b""
        while b"}" not in reply:
            reply += uploads[0].recv(65536)
        assert status_of(reply) == 200
        assert s.classify(photo, conn=s.connection(source="127.0.0.10"))[0] == 200
        for sock in uploads:
            sock.close()
    assert s.code == 0


# -- TLS ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        unavailable("no openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "server.key", folder / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


# The event loop and HTTP parser a Pi's 32-bit OS gets (no uvloop or httptools wheels there),
# besides this machine's default (uvloop and httptools).
ASYNCIO_H11 = ("import sys; sys.modules['uvloop'] = sys.modules['httptools'] = None; "
               "from effnet_lite.apps.serve.cli import main; sys.exit(main())")


@pytest.mark.parametrize("stack", ["uvloop+httptools", "asyncio+h11"])
def test_silent_tls_connections_cannot_lock_the_others_out(model, photo, certificate, stack):
    """Under `ulimit -n 1024`, 1,100 TCP connections to a --tls-cert server that never start a
    handshake: good TLS clients are still served (99 % within 2 s), and the silent ones are
    closed by the handshake deadline (or earlier, to make room)."""
    cert, key = certificate
    deadline = 3.0
    launch = ["-c", ASYNCIO_H11] if stack == "asyncio+h11" else None
    with Server(model, "--workers", "2", "--tls-cert", cert, "--tls-key", key, "--tls-handshake-timeout", deadline,
                open_files=1024, launch=launch) as s:
        context = ssl.create_default_context(cafile=str(cert))

        def classify() -> tuple[bool, float]:
            started = time.monotonic()
            conn = http.client.HTTPSConnection(s.host, s.port, timeout=10, context=context)
            try:
                conn.request("POST", "/v1/classify?top_k=1", photo, {"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                ok = response.status == 200 and b"categories" in response.read()
            except OSError:
                ok = False
            finally:
                conn.close()
            return ok, time.monotonic() - started

        assert classify()[0]
        results = []
        with SlowClients(s.host, s.port, 1100, head=b"", trickle=b"", source="127.0.0.2") as silent:
            assert silent.refused_at_connect == 0 and len(silent.opened) == 1100
            stop_at = time.monotonic() + deadline + 2

            def good_client():
                while time.monotonic() < stop_at:
                    results.append(classify())

            clients = [threading.Thread(target=good_client) for _ in range(3)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            wait_for(lambda: silent.open_count() == 0, deadline + 10, "every silent connection closed")
            lasted = sorted(silent.closed.values())
        good = [ok and seconds <= 2 for ok, seconds in results]
        timed_out = s.metric("effnet_connections_timed_out_total", {"phase": "handshake"})
        evicted = s.metric("effnet_connections_evicted_total", {"phase": "handshake"})
        print(f"\n{stack}: 1,100 silent TLS connections: {timed_out:.0f} closed by the handshake deadline "
              f"({deadline:g} s), {evicted:.0f} to make room; longest open {lasted[-1]:.2f} s; good requests "
              f"{sum(good)}/{len(good)} within 2 s")
        assert len(good) >= 15 and sum(good) >= 0.99 * len(good), f"{sum(good)} of {len(good)}"
        assert lasted[-1] <= deadline + 1.5, f"a silent connection lasted {lasted[-1]:.1f} s"
        assert timed_out >= 500 and timed_out + evicted >= 1100
        assert s.metric("effnet_connections_open") <= 3
    assert s.code == 0, s.stderr
    assert "Traceback" not in s.stderr, s.stderr[-3000:]


def test_token_over_cleartext_is_warned_about(model, tmp_path):
    """A --token-file on a non-loopback --host without --tls-cert: one warning line at start
    that says the token can be read on the network and how to add TLS (run in a network
    namespace of its own, which has only loopback: the test exposes nothing)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    banner, err, _ = in_network_namespace(model, "--host", "0.0.0.0", "--token-file", token_file, "--workers", "1")
    assert banner.startswith("effnet-serve: http://0.0.0.0:"), (banner, err)
    warnings = [line for line in err.splitlines() if "cleartext" in line]
    assert len(warnings) == 1 and "--tls-cert" in warnings[0], err
    with Server(model, "--workers", "1", "--token-file", token_file) as s:      # loopback: no warning
        pass
    assert s.code == 0 and "cleartext" not in s.stderr
