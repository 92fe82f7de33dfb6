"""A dependency-free progress bar on stderr, shown only when stderr is a terminal."""
from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """A time to wait, as a person reads it: "40 s", "12 min", "2.5 hours"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} hours"


class Progress:
    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream=None):
        self.total, self.desc, self.n = max(int(total), 0), desc, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled:
            frac = self.n / self.total if self.total else 1.0
            bar = "#" * int(frac * 30)
            rate = self.n / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r{self.desc} [{bar:<30}] {self.n}/{self.total} {rate:.1f}/s")
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar so that a line printed next starts clean."""
        if self.enabled and self.n:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.n:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(iterable, total: int | None = None, desc: str = "", enabled: bool | None = None):
    """Iterate with a progress bar (the bar only when stderr is a terminal, or if forced)."""
    items = iterable if total is not None else list(iterable)
    with Progress(total if total is not None else len(items), desc, enabled) as bar:
        for item in items:
            yield item
            bar.update()
