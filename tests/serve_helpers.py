"""effnet-serve under test: the real command as a subprocess on 127.0.0.1 (a free port it picks
itself) and plain HTTP/1.1 clients (http.client, raw sockets)."""
from __future__ import annotations

import http.client
import json
import os
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

    def __init__(self, model, *args, start_timeout: float = 60):
        self.argv = [sys.executable, "-m", "effnet_lite.apps.serve.cli", "--model", str(model), "--port", "0", *map(str, args)]
        self.start_timeout = start_timeout
        self.code = None
        self.stderr = ""
        self._err: list[str] = []

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
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

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

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
