"""effnet-bench --mode service: what HTTP costs. effnet-serve's requests per second and latency
against in-process Classifier throughput on the same cores, in one run.

For each worker count W: W processes each classify the images in a loop with their own
Classifier (1 thread), versus `effnet-serve --workers W --threads 1` loaded by 2W keep-alive
http.client processes posting the same JPEG bytes. Clients share the machine with the server,
as they would on a board serving itself; their cost is part of the figure. Then one client,
one request at a time: the p50 that HTTP adds to an in-process classify of the same image.
Last, what effnet-serve's guards cost: the same load on the server as it is, with a token and
a rate limit too, and without its guards (patched out in the benchmark's own process); and,
in-process, the time its per-request checks (client address, token, rate limits, per-client
cap) take, in plain and adversarial settings.
Rounds interleave the settings; medians are reported with the targets (service >= 80 % of
in-process throughput; HTTP adds <= 1.5 ms at p50; guarded >= 0.9x unguarded; checks
< 0.2 ms per request).
"""
from __future__ import annotations

import http.client
import multiprocessing
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from effnet_lite.apps.serve.cli import served_at
from effnet_lite.dataset import image_files
from effnet_lite.progress import Progress

from .throughput import report_mode

THROUGHPUT_TARGET, ADDED_P50_TARGET_MS = 0.80, 1.5
_state: dict = {}


# -- in-process: one Classifier per process ---------------------------------------------------------
def _load(model: str) -> None:
    from effnet_lite import Classifier, ClassifierOptions
    from effnet_lite.quiet import Captured
    with Captured():        # LiteRT's banner, once per process
        _state["clf"] = Classifier.from_file(model, ClassifierOptions(num_threads=1))


def _classify_loop(images: list[bytes], count: int) -> tuple[float, float, list[float]]:
    clf, times = _state["clf"], []
    for image in images[:3]:
        clf.classify(image)         # warm-up
    start = time.perf_counter()     # CLOCK_MONOTONIC: comparable across processes
    for n in range(count):
        t0 = time.perf_counter()
        clf.classify(images[n % len(images)])
        times.append(time.perf_counter() - t0)
    return start, time.perf_counter(), times


# -- over HTTP: a keep-alive http.client per process -----------------------------------------------
def connect(host: str, port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle off, as curl and requests (urllib3) open theirs;
    http.client's default adds about 0.3 ms per request with 40 kB uploads here."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _post_loop(host: str, port: int, images: list[bytes], count: int,
               headers: dict | None = None) -> tuple[float, float, list[float]]:
    conn, times = connect(host, port), []
    headers = {"Content-Type": "image/jpeg", **(headers or {})}

    def post(image):
        conn.request("POST", "/v1/classify", image, headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"effnet-serve answered {response.status}: {body[:200]!r}")
    for image in images[:3]:
        post(image)
    start = time.perf_counter()
    for n in range(count):
        t0 = time.perf_counter()
        post(images[n % len(images)])
        times.append(time.perf_counter() - t0)
    conn.close()
    return start, time.perf_counter(), times


def _rate(parts) -> tuple[float, list[float]]:
    """Images per second over the span every process was working, and all latencies."""
    start, end = min(p[0] for p in parts), max(p[1] for p in parts)
    times = [t for p in parts for t in p[2]]
    return len(times) / (end - start), times


def in_process(pool, images: list[bytes], workers: int, count: int):
    return _rate(pool.starmap(_classify_loop, [(images, count)] * workers))


# The server without its guards, as it was before them: uvicorn's own protocol (no header
# deadline or connection cap) and no token/rate-limit middleware. Patched in the benchmark's
# own process only; effnet-serve has no switch to turn them off.
UNGUARDED = ("import sys; import effnet_lite.apps.serve.cli as cli, effnet_lite.apps.serve.app as app; "
             "cli.guarded = lambda protocol, connections: protocol; app.Guard = lambda inner, *a, **k: inner; "
             "app.ClientMiddleware = lambda inner, *a, **k: inner; "
             "sys.exit(cli.main(sys.argv[1:]))")
# (name, extra effnet-serve arguments, unguarded); the token and the rate limit are checked on
# every request, the limit set far above what the clients reach (they share one address)
GUARD_SETTINGS = (("unguarded", (), True), ("guarded", (), False),
                  ("guarded + token + rate limit", ("--rate-limit", "100000/s"), False))
BENCH_TOKEN = "effnet-bench-service-token-0123456789"
GUARD_TARGET = 0.90
CHECKS_TARGET_US = 200


def checks_cost(requests: int = 20000, repeats: int = 5) -> list[dict]:
    """Microseconds per request that the per-request checks add to a bare ASGI app, in-process
    (the median of `repeats`): the client's address and key, the token, the rate limits and the
    per-client cap, as effnet-serve stacks them."""
    import asyncio

    from effnet_lite.apps.serve.clients import ClientAddresses, ClientMiddleware, parse_proxies
    from effnet_lite.apps.serve.guard import SCOPE_KEY, Guard, RateLimit, Token
    from effnet_lite.apps.serve.uploads import Uploads

    def scope(peer: str, headers: list) -> dict:
        return {"type": "http", "path": "/v1/classify", "client": (peer, 50000), "headers": headers}

    auth = (b"authorization", f"Bearer {BENCH_TOKEN}".encode())
    hops = ", ".join(f"10.0.{i}.1" for i in range(8))
    settings = {     # name -> (client addresses, the requests' scopes, rate limit filled with other clients)
        "IPv4 peer, token, rate limit": (ClientAddresses(), [scope(f"192.0.2.{i % 200}", [auth])
                                                             for i in range(requests)], 0),
        "trusted proxy, 9-hop X-Forwarded-For, new IPv6 clients, full rate-limit table":
            (ClientAddresses(parse_proxies("10.0.0.0/8")),
             [scope("10.255.0.1", [auth, (b"x-forwarded-for", f"2001:db8:{i:x}::1, {hops}".encode())])
              for i in range(requests)], 4096),
        "IPv4 peer, wrong token (401/429)": (ClientAddresses(), [scope(f"192.0.2.{i % 200}", [
            (b"authorization", b"Bearer wrong")]) for i in range(requests)], 0),
    }

    async def send(message):
        pass

    async def receive():
        return {"type": "http.request", "body": b""}

    async def run(app, scopes) -> float:
        started = time.perf_counter()
        for sc in scopes:
            await app(dict(sc), receive, send)
        return time.perf_counter() - started

    rows = []
    for name, (addresses, scopes, filled) in settings.items():
        uploads = Uploads(20_000_000, 400_000_000, per_client=8, min_rate=10e3)

        async def bare(scope, receive, send):
            pass

        async def capped(scope, receive, send):
            with uploads.request(scope.get(SCOPE_KEY, "?")):
                pass
        times = []
        for _ in range(repeats):
            rate, strangers = RateLimit(1e6), RateLimit(1e5)
            for i in range(filled):
                rate.wait(f"198.18.{i // 256}.{i % 256}")
            checked = ClientMiddleware(Guard(capped, Token(BENCH_TOKEN), rate, False, strangers), addresses)
            times.append((asyncio.run(run(checked, scopes)) - asyncio.run(run(bare, scopes))) / requests)
        rows.append({"setting": name, "us_per_request": statistics.median(times) * 1e6})
    return rows


class Service:
    def __init__(self, model: Path, workers: int, extra: tuple = (), unguarded: bool = False,
                 token_file: Path | None = None):
        args = ["--model", str(model), "--port", "0", "--workers", str(workers), "--threads", "1",
                "--max-queue", "64", *extra, *(["--token-file", str(token_file)] if token_file else [])]
        cmd = [sys.executable, "-c", UNGUARDED, *args] if unguarded else \
            [sys.executable, "-m", "effnet_lite.apps.serve.cli", *args]
        self.headers = {"Authorization": f"Bearer {BENCH_TOKEN}"} if token_file else {}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        address = served_at(self.proc.stdout.readline())
        if address is None:
            self.proc.kill()
            raise RuntimeError(f"effnet-serve did not start (exit {self.proc.wait()})")
        _, self.host, self.port = address

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def over_http(pool, service: Service, images: list[bytes], clients: int, count: int):
    return _rate(pool.starmap(_post_loop, [(service.host, service.port, images, count, service.headers)] * clients))


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1e3, q))


def measure(model: Path, folder: Path, workers: list[int], count: int, rounds: int) -> dict:
    images = [p.read_bytes() for p in image_files(folder)]
    if not images:
        raise RuntimeError(f"{folder}: no images")
    spawn = multiprocessing.get_context("spawn")
    grid = {w: {"in_process": [], "service": [], "p50": [], "p99": []} for w in workers}
    sequential = {"in_process": [], "service": []}
    guards = {name: [] for name, _, _ in GUARD_SETTINGS}
    top = max(workers)
    token_dir = tempfile.TemporaryDirectory(prefix="effnet-bench-")
    token_file = Path(token_dir.name) / "token"
    token_file.write_text(BENCH_TOKEN)
    token_file.chmod(0o600)
    with token_dir, Progress(rounds * (2 * len(workers) + 2 + len(GUARD_SETTINGS)), "service benchmark") as bar:
        for _ in range(rounds):
            for name, extra, unguarded in GUARD_SETTINGS:   # what the guards cost, W = the most workers
                service = Service(model, top, extra, unguarded, token_file if "token" in name else None)
                try:
                    with spawn.Pool(2 * top) as pool:
                        guards[name].append(over_http(pool, service, images, 2 * top, count // 2)[0])
                finally:
                    service.close()
                bar.update()
            for w in workers:       # interleaved: every setting sees the same machine state
                with spawn.Pool(w, _load, (str(model),)) as pool:
                    grid[w]["in_process"].append(in_process(pool, images, w, count)[0])
                bar.update()
                service = Service(model, w)
                try:
                    with spawn.Pool(2 * w) as pool:
                        rate, times = over_http(pool, service, images, 2 * w, count // 2)
                finally:
                    service.close()
                grid[w]["service"].append(rate)
                grid[w]["p50"].append(percentile(times, 50))
                grid[w]["p99"].append(percentile(times, 99))
                bar.update()
            with spawn.Pool(1, _load, (str(model),)) as pool:
                sequential["in_process"].append(percentile(in_process(pool, images, 1, count)[1], 50))
            bar.update()
            service = Service(model, 1)
            try:
                with spawn.Pool(1) as pool:
                    sequential["service"].append(percentile(over_http(pool, service, images, 1, count)[1], 50))
            finally:
                service.close()
            bar.update()
    med = statistics.median
    rows = [{"workers": w, "clients": 2 * w, "in_process_per_s": med(g["in_process"]),
             "service_per_s": med(g["service"]), "ratio": med(s / i for s, i in zip(g["service"], g["in_process"])),
             "p50_ms": med(g["p50"]), "p99_ms": med(g["p99"])} for w, g in grid.items()]
    added = [s - i for s, i in zip(sequential["service"], sequential["in_process"])]
    base = guards["unguarded"]
    guard_rows = [{"setting": name, "workers": top, "clients": 2 * top, "service_per_s": med(rates),
                   "vs_unguarded": med(r / b for r, b in zip(rates, base))} for name, rates in guards.items()]
    return {"model": model.name, "folder": str(folder), "images": len(images), "requests_per_run": count,
            "rounds": rounds, "rows": rows, "guards": guard_rows, "checks": checks_cost(),
            "sequential": {"in_process_p50_ms": med(sequential["in_process"]),
                           "service_p50_ms": med(sequential["service"]), "added_p50_ms": med(added)}}


def print_report(r: dict) -> None:
    print(f"service: {r['model']}, {r['images']} images from {r['folder']} cycled, {r['requests_per_run']} "
          f"classifications per run, median of {r['rounds']} interleaved rounds")
    print(f"{'workers':>7} {'clients':>7} {'in-process/s':>13} {'service req/s':>14} {'ratio':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for row in r["rows"]:
        print(f"{row['workers']:>7} {row['clients']:>7} {row['in_process_per_s']:>13.1f} "
              f"{row['service_per_s']:>14.1f} {row['ratio']:>6.2f} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f}")
    s = r["sequential"]
    print(f"one client, one request at a time (1 worker): in-process p50 {s['in_process_p50_ms']:.2f} ms, "
          f"over HTTP {s['service_p50_ms']:.2f} ms")
    worst = min(row["ratio"] for row in r["rows"])
    print(f"  [{'ok' if worst >= THROUGHPUT_TARGET else 'MISSED'}] service throughput / in-process: "
          f"{worst:.2f} at worst (target >= {THROUGHPUT_TARGET:.2f})")
    print(f"  [{'ok' if s['added_p50_ms'] <= ADDED_P50_TARGET_MS else 'MISSED'}] HTTP adds "
          f"{s['added_p50_ms']:.2f} ms at p50 (target <= {ADDED_P50_TARGET_MS} ms)")
    print("what the guards cost (header deadline, connection cap; then the token and rate limit too):")
    for row in r["guards"]:
        print(f"  {row['setting']:<30} {row['workers']} worker(s), {row['clients']} clients: "
              f"{row['service_per_s']:7.1f} req/s, {row['vs_unguarded']:.2f}x unguarded")
    worst = min(row["vs_unguarded"] for row in r["guards"])
    print(f"  [{'ok' if worst >= GUARD_TARGET else 'MISSED'}] guarded / unguarded requests/s: {worst:.2f} at worst "
          f"(target >= {GUARD_TARGET:.2f})")
    print("what the per-request checks take (client address, token, rate limits, per-client cap; in-process):")
    for row in r["checks"]:
        print(f"  {row['setting']:<78} {row['us_per_request']:6.1f} us")
    worst = max(row["us_per_request"] for row in r["checks"])
    print(f"  [{'ok' if worst < CHECKS_TARGET_US else 'MISSED'}] per-request checks: {worst:.1f} us at worst "
          f"(target < {CHECKS_TARGET_US} us)")


def main_from_args(args) -> int:
    """effnet-bench's service mode (arguments already checked by effnet-bench)."""
    return report_mode(args, lambda: measure(args.models[0], args.data, args.workers, args.requests,
                                             args.rounds), print_report)
