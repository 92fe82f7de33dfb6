"""effnet-serve on an emulated board: the server and its worker process run under qemu-user
and are asked over loopback from x86, with the answers compared with x86 effnet-infer's.

qemu-user cannot start an ARM program by itself when the emulated Python spawns a worker
(that needs binfmt_misc, which a container rarely has), so the worker is started through a
launcher script that runs the emulator again; a sitecustomize hook points multiprocessing
at it. Both live only in the harness's work folder.
"""
from __future__ import annotations

import fcntl
import http.client
import json
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from effnet_lite.apps.procs import processes
from effnet_lite.apps.serve.cli import served_at

from .arm_emulation import Emulator, build_rootfs
from .arm_packages import EmulationError, install_runtime
from .arm_targets import Target

HOOK = """import os
if os.environ.get("EFFNET_EMULATED_PYTHON"):
    import multiprocessing
    multiprocessing.set_executable(os.environ["EFFNET_EMULATED_PYTHON"])
"""


def emulator(target: Target, wheel: Path, cache: Path) -> Emulator:
    (cache / target.name).mkdir(parents=True, exist_ok=True)
    with open(cache / target.name / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # one builder per userland (parallel tests)
        return Emulator(target, build_rootfs(target, cache), install_runtime(target, wheel, cache))


def _post(host: str, port: int, path: str, body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request("POST" if body is not None else "GET", path, body, {"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def serve_check(emu: Emulator, model: Path, photos: list[Path], work: Path) -> dict:
    """Start effnet-serve on the board, classify `photos` through it, send it a bad image,
    stop it with SIGTERM; what it answered and how it ended."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "hook").mkdir(exist_ok=True)
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    launcher = work / "emulated-python"
    launcher.write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, emu.python())) + ' "$@"\n')
    launcher.chmod(0o755)
    cmd, env = emu.command("effnet_lite.apps.serve.cli", "--model", model, "--port", "0", "--workers", "1",
                           pythonpath=(work / "hook",))
    env["EFFNET_EMULATED_PYTHON"] = str(launcher)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    try:
        line = proc.stdout.readline()       # the URL, once the worker has opened the model
        address = served_at(line)
        if address is None:
            raise EmulationError(f"{emu.target.name}: effnet-serve did not start: {''.join(stderr)[-800:]}")
        out = {"banner": line.strip(), "startup_seconds": round(time.perf_counter() - start, 1)}
        _, host, port = address
        out["answers"] = {}
        for photo in photos:
            status, body = _post(host, port, f"/v1/classify?name={photo.name}", photo.read_bytes())
            out["answers"][photo.name] = body["categories"] if status == 200 else {"status": status, **body}
        out["bad_image"] = _post(host, port, "/v1/classify", b"\xff\xd8\xff\xe0 truncated JPEG")
        out["health"] = _post(host, port, "/healthz")
        out["model"] = _post(host, port, "/v1/model")[1]
        out["workers"] = [p.cmdline for p in processes() if p.ppid == proc.pid]   # emulated: qemu
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out_code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out_code = proc.wait()
    time.sleep(0.2)
    out.update(exit=out_code, stderr=[s.rstrip("\n") for s in stderr])
    return out
