"""The processes of this Linux machine, from /proc: what effnet-serve reports of its workers'
memory, and what the tests and the emulation harness check of a command's children."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str          # "R", "S", ..., "Z" for a zombie
    ppid: int
    pgrp: int
    cmdline: str        # arguments joined by spaces


def processes() -> list[Proc]:
    """Every process still readable (empty where there is no /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the command name in parentheses may hold spaces: split after its last ")"
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        found.append(Proc(int(stat.parent.name), state, int(ppid), int(pgrp), cmdline.strip()))
    return found


def resident_bytes(pid: int) -> int | None:
    """A process's resident set size, or None."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
