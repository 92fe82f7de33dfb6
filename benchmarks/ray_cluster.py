"""A real multi-node Ray cluster on this machine, on loopback only: a head and more raylets,
each started by `ray start` with token authentication, as the README's recipe does, inside a
network namespace of their own that has nothing but 127.0.0.1. No Ray process can bind to, or
advertise, another address (Ray turns `--node-ip-address 127.0.0.1` into the interface address
otherwise), and the cluster's ports cannot meet another one's. Every command (the drivers
too) runs in that namespace; stopping kills exactly the processes in it, in every outcome:
also when the test process itself is killed (`ray stop` would stop every Ray of the machine). Needs root or CAP_SYS_ADMIN (unshare)
and util-linux's unshare/nsenter. Used by tests/test_ray_cluster.py and the Ray scaling
benchmark.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 6379                 # the head's port: free in a namespace of its own
HEAD, LOOPBACK = "HEAD", "127.0.0.1"
# The README's commands (tests check they are these); HEAD and NODE are the machines' addresses.
RECIPE = {
    "token": "ray get-auth-token --generate",
    "head": f"ray start --head --node-ip-address HEAD --port {PORT}",
    "node": f"ray start --address HEAD:{PORT} --node-ip-address NODE",
}
# What a test cluster adds to them: CPUs per node, no dashboard or usage report, a short
# session folder (Ray's socket paths must stay under 108 characters).
_QUIET = ["--disable-usage-stats"]
# The namespace's holder: brings loopback up, then waits on stdin. When its parent goes, however
# it goes (even SIGKILL), stdin ends and the holder kills every process of the namespace.
_HOLDER = ("import fcntl, os, signal, socket, struct, sys\n"
           "s = socket.socket(); req = struct.pack('16sh', b'lo', 0)\n"
           "flags = struct.unpack('16sh', fcntl.ioctl(s, 0x8913, req))[1]\n"            # SIOCGIFFLAGS
           "fcntl.ioctl(s, 0x8914, struct.pack('16sh', b'lo', flags | 1))\n"           # SIOCSIFFLAGS, IFF_UP
           "print('ready', flush=True); sys.stdin.read()\n"
           "mine = os.readlink('/proc/self/ns/net')\n"
           "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
           "    try:\n"
           "        if int(pid) != os.getpid() and os.readlink(f'/proc/{pid}/ns/net') == mine:\n"
           "            os.kill(int(pid), signal.SIGKILL)\n"
           "    except OSError:\n"
           "        pass\n")


class ClusterError(RuntimeError):
    pass


class LoopbackCluster:
    """`with LoopbackCluster(cpus=[1, 1]) as c:` a head and one more raylet of 1 CPU each;
    `c.run([...])` runs a command (a driver) in the cluster's network, `c.env()` is a
    driver's environment with the token, `c.raylets()` the raylet pids in start order."""

    def __init__(self, cpus: list[int], recipe: dict | None = None, start_timeout: float = 90):
        self.cpus, self.recipe, self.start_timeout = cpus, recipe or RECIPE, start_timeout
        self.address = f"{LOOPBACK}:{PORT}"
        self.holder = None

    # -- the namespace ------------------------------------------------------------------------
    def __enter__(self):
        self.work = Path(tempfile.mkdtemp(prefix="effray-"))
        self.home = self.work / "home"
        self.home.mkdir()
        try:
            self.holder = subprocess.Popen(["unshare", "--net", sys.executable, "-c", _HOLDER],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
        except OSError as e:
            raise ClusterError(f"cannot run unshare: {e}") from None
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            err = self.holder.stderr.read() if self.holder.poll() is not None else ""
            self.holder = None
            raise ClusterError(f"no network namespace for the cluster (unshare --net needs root): {err.strip()[:200]}")
        self.netns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        try:
            self._bring_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]

    def env(self, token: bool = True, **extra) -> dict:
        """A driver's environment: the token where the recipe puts it (HOME/.ray/auth_token)
        and RAY_AUTH_MODE=token; without `token`, neither."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = str(self.home if token else self.work)
        if token:
            env["RAY_AUTH_MODE"] = "token"
        env.update(extra)
        return env

    def run(self, argv: list, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix(), *map(str, argv)], env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, argv: list, env: dict | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix(), *map(str, argv)], env=env or self.env(), **kwargs)

    # -- the cluster --------------------------------------------------------------------------
    def command(self, which: str, cpus: int | None = None) -> list[str]:
        words = [w.replace("HEAD", LOOPBACK).replace("NODE", LOOPBACK) for w in shlex.split(self.recipe[which])]
        if which == "head":
            words += ["--include-dashboard", "false", "--temp-dir", str(self.work / "t")]
        if cpus is not None:
            words += ["--num-cpus", str(cpus)]
        return words + (_QUIET if which != "token" else [])

    def _bring_up(self) -> None:
        self._ray(self.command("token"))
        token = self.home / ".ray" / "auth_token"
        if not token.is_file():
            raise ClusterError(f"{self.recipe['token']!r} wrote no {token}")
        token.chmod(0o600)              # as the recipe says: readable by the user only
        self._ray(self.command("head", self.cpus[0]))
        for cpus in self.cpus[1:]:
            self.add_node(cpus)

    def add_node(self, cpus: int) -> None:
        before = len(self.raylets())
        self._ray(self.command("node", cpus))
        deadline = time.monotonic() + self.start_timeout
        while len(self.raylets()) <= before:
            if time.monotonic() > deadline:
                raise ClusterError("the new node's raylet did not start")
            time.sleep(0.1)

    def _ray(self, argv: list[str]) -> None:
        done = self.run(argv, timeout=self.start_timeout)
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split())[-400:]
            raise ClusterError(f"{' '.join(argv[:3])} failed (exit {done.returncode}): {tail}")

    def processes(self) -> list[int]:
        """Every process in the cluster's network namespace (its Ray processes and drivers)."""
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if os.readlink(entry / "ns" / "net") == self.netns and int(entry.name) != self.holder.pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
        return found

    def raylets(self) -> list[int]:
        """The raylet processes (one per node), oldest first."""
        def started(pid):
            try:
                return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            except (OSError, ValueError, IndexError):
                return 0
        found = []
        for pid in self.processes():
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith(b"/raylet"):
                found.append(pid)
        return sorted(found, key=started)

    def kill(self, pid: int) -> None:
        """SIGKILL one of the cluster's processes (a node's raylet: the node is lost)."""
        if pid not in self.processes():
            raise ClusterError(f"process {pid} is not one of the cluster's")
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process in the namespace; then the namespace. (Some of
        Ray's processes outlast SIGTERM by more than 10 s: 2 s is their grace.)"""
        if self.holder is None:
            return
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        self.holder.stdin.close()
        self.holder.wait(10)
        self.holder = None
        subprocess.run(["rm", "-rf", str(self.work)], check=False)
