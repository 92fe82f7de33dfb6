"""A command's own peak memory, as the kernel counts it.

On Linux a process's ru_maxrss carries the peak of the process it was forked from across
exec, so a command started straight from a large process (a pytest worker holding models, a
benchmark that has loaded PyTorch) reports that process's memory instead of its own: a trainer
run measured 1.4 GB alone and 3.8 GB from a test worker. A small launcher (a bare Python of
about 10 MB) starts the command instead and reports the wait4 figure of its child. A Python
process of ours reports its own peak instead: VmHWM, the high-water mark of its own address
space (own_peak_rss_mb).
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")


def run_with_peak_rss(cmd: list, timeout: float | None = None) -> tuple[int, str, float, float]:
    """(exit code, stderr, wall seconds, peak RSS in MB) of `cmd`; its stdout is discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)      # the launcher and the command with it
        proc.communicate()
        raise
    seconds = time.perf_counter() - start
    code, kb = out.split()[-2:] if proc.returncode == 0 else (proc.returncode, 0)
    return int(code), err, seconds, int(kb) / 1024


def own_peak_rss_mb() -> float:
    """This process's peak resident memory since it was started (exec), not its parent's."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):     # no procfs: the kernel's own count
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
