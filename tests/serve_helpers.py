"""effnet-serve under test: the real command as a subprocess on 127.0.0.1 (a free port it picks
itself) and plain HTTP/1.1 clients (http.client, raw sockets)."""
from __future__ import annotations

import http.client
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from effnet_lite.apps.procs import processes, resident_bytes
from effnet_lite.apps.serve.cli import served_at


class Server:
    """`with Server(model, "--workers", "2") as s:` runs effnet-serve until the block ends,
    then stops it with SIGTERM; `s.code` and `s.stderr` hold how it ended."""

    def __init__(self, model, *args, start_timeout: float = 60, open_files: int | None = None, env=None,
                 launch: list[str] | None = None):
        """`launch`: the interpreter's arguments that start effnet-serve (default -m ...serve.cli)."""
        launch = launch or ["-m", "effnet_lite.apps.serve.cli"]
        self.argv = [sys.executable, *launch, "--model", str(model), "--port", "0", *map(str, args)]
        self.start_timeout = start_timeout
        self.open_files = open_files        # soft and hard RLIMIT_NOFILE, as `ulimit -n N` sets them
        self.env = env
        self.code = None
        self.stderr = ""
        self._err: list[str] = []

    def __enter__(self):
        limit = self.open_files
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env=self.env,
                                     preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
                                     if limit else None)
        threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True).start()
        line = _readline(self.proc.stdout, self.start_timeout)
        address = served_at(line)
        if address is None:
            self.stop()
            raise RuntimeError(f"effnet-serve did not start: {line!r} {self.stderr}")
        self.banner = line
        self.url, self.host, self.port = address
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.code = self.proc.wait()
        time.sleep(0.1)
        self.stderr = "".join(self._err)
        return self.code

    def workers(self) -> list[int]:
        """The pids of the server's worker processes."""
        return [p.pid for p in processes() if p.ppid == self.proc.pid and "spawn_main" in p.cmdline]

    def rss(self) -> int:
        """Resident bytes of the server and its workers together."""
        return sum(resident_bytes(pid) or 0 for pid in [self.proc.pid, *self.workers()])

    def connection(self, timeout: float = 60, source: str | None = None) -> http.client.HTTPConnection:
        """`source`: the client's own address (any of 127.0.0.0/8 is this machine, so a test can
        be two clients)."""
        source_address = (source, 0) if source else None
        if self.url.startswith("https:"):       # (the certificate is the test's own; checked where it matters)
            import ssl
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, source_address=source_address,
                                               context=ssl._create_unverified_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout, source_address=source_address)

    def request(self, method: str, path: str, body=None, headers=None, conn=None):
        """(status, headers, parsed JSON or text) over `conn` (kept alive) or a new connection."""
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            kind = response.getheader("Content-Type", "")
            payload = json.loads(data) if kind.startswith("application/json") else data.decode("utf-8", "replace")
            return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        finally:
            if own:
                conn.close()

    def classify(self, image: bytes, query: str = "", conn=None, content_type: str = "image/jpeg"):
        return self.request("POST", f"/v1/classify{query}", image, {"Content-Type": content_type}, conn)

    def metric(self, name: str, labels: dict | None = None, default: float | None = None) -> float:
        """One sample of /metrics, read with prometheus_client's parser (`default` when the
        series does not exist yet, else KeyError)."""
        from prometheus_client.parser import text_string_to_metric_families
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and (labels or {}).items() <= sample.labels.items():
                    return sample.value
        if default is not None:
            return default
        raise KeyError(name)

    def raw(self, data: bytes, then_read: bool = True, pause: float = 0.0) -> bytes:
        """Send bytes on a fresh socket and (optionally) read the reply until the server closes."""
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(data)
            if pause:
                time.sleep(pause)
            if not then_read:
                return b""
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, socket.timeout):
                pass
            return b"".join(chunks)


def _readline(stream, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def status_of(reply: bytes) -> int:
    """The status code of a raw HTTP/1.1 reply (0 if there was none)."""
    head = reply.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) >= 2 and head[1].isdigit() else 0


def json_body(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


class SlowClients:
    """`n` connections run by one thread, each sending `head` at once, then one byte of `trickle`
    every `every` seconds for ever (a "slowloris"; `trickle=b""`: silent). `sources` are the
    clients' own addresses, taken in turn. With `reopen`, a connection the server closes is
    replaced by a new one until the end. `closed[i]` is how long connection i stayed open once
    the server closed it, `replies[i]` what it was sent."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "

    def __init__(self, host: str, port: int, n: int, every: float = 1.0, source: str | None = None,
                 head: bytes | None = None, trickle: bytes | None = None, sources: list[str] | None = None,
                 reopen: bool = False):
        self.host, self.port, self.n, self.every = host, port, n, every
        self.sources = sources or [source]
        self.head = self.HEAD[:8] if head is None else head             # half the request line
        self.trickle = self.HEAD[8:] if trickle is None else trickle
        self.reopen = reopen
        self.opened: list[float] = []
        self.closed: dict[int, float] = {}
        self.replies: dict[int, bytes] = {}
        self.refused_at_connect = 0
        self._stop = threading.Event()

    def _open(self, source: str | None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            sock.bind((source, 0))
        sock.settimeout(10)
        try:
            sock.connect((self.host, self.port))
            if self.head:
                sock.sendall(self.head)
        except OSError:
            self.refused_at_connect += 1
            sock.close()
            return
        sock.setblocking(False)
        self.opened.append(time.monotonic())
        self.socks.append(sock)
        self.sent.append(0)
        self.source_of.append(source)
        self.selector.register(sock, selectors.EVENT_READ, len(self.socks) - 1)

    def __enter__(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < self.n + 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, self.n + 1024), hard))
        self.selector = selectors.DefaultSelector()
        self.socks, self.sent, self.source_of = [], [], []
        for i in range(self.n):
            self._open(self.sources[i % len(self.sources)])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        next_byte = time.monotonic() + self.every
        while not self._stop.is_set() and (self.reopen or len(self.closed) < len(self.socks)):
            for key, _ in self.selector.select(timeout=max(0.0, min(0.2, next_byte - time.monotonic()))):
                i = key.data
                try:
                    data = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    self.replies[i] = self.replies.get(i, b"") + data
                    continue
                self.closed[i] = time.monotonic() - self.opened[i]
                self.selector.unregister(key.fileobj)
                if self.reopen and not self._stop.is_set():
                    self._open(self.source_of[i])
            if time.monotonic() >= next_byte:
                next_byte += self.every
                for i, sock in enumerate(self.socks):
                    if i not in self.closed and self.trickle:
                        byte = self.trickle[self.sent[i] % len(self.trickle):][:1]
                        try:
                            sock.send(byte)
                            self.sent[i] += 1
                        except OSError:
                            pass

    def open_count(self) -> int:
        return len(self.socks) - len(self.closed)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()
        self.selector.close()


def in_network_namespace(model, *args, path: str | None = None) -> tuple[str, str, tuple | None]:
    """effnet-serve started with `args` in a network namespace of its own (`unshare --net`: only
    loopback, which is brought up), so that --host 0.0.0.0 exposes nothing. With `path`, one GET
    of it is made from inside the namespace (nsenter) and its (status, body) returned. Then the
    server is stopped: (its first stdout line, its stderr, the answer)."""
    from tests_helpers import unavailable
    for tool in ("unshare", "nsenter", "ip"):
        if not shutil.which(tool):
            unavailable(f"no {tool} (util-linux, iproute2)")
    script = 'ip link set lo up && exec "$@"'
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", script, "sh", sys.executable, "-m",
                             "effnet_lite.apps.serve.cli", "--model", str(model), "--port", "0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answer = None
    try:
        line = _readline(proc.stdout, 60)
        if not line:
            proc.kill()
            err = proc.communicate(timeout=30)[1]
            if "unshare" in err or "Operation not permitted" in err:
                unavailable(f"unshare --net is not allowed here: {err.strip()[:200]}")
            return line, err, None
        if path is not None:
            url = served_at(line)[0].replace("0.0.0.0", "127.0.0.1") + path.lstrip("/")
            client = ("import sys, urllib.request, urllib.error\n"
                      "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=30)\n"
                      "except urllib.error.HTTPError as e:\n    r = e\n"
                      "print(r.status); print(r.read().decode())")
            done = subprocess.run(["nsenter", f"--net=/proc/{proc.pid}/ns/net", sys.executable, "-c", client, url],
                                  capture_output=True, text=True, timeout=60)
            status, _, body = done.stdout.partition("\n")
            answer = (int(status) if status.isdigit() else done.stderr, body)
    finally:
        proc.terminate()
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
    return line, err, answer
