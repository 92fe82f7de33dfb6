"""Keep the libraries' own chatter off a command's stderr, so that it carries only our lines.

Native code (LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate", libtiff's warnings)
writes to file descriptor 2 directly, past Python's sys.stderr; Python-level warnings
(Pillow's UserWarnings) go through the warnings module. `Captured` takes both for the length
of a `with` block and hands them back, so the caller can fold them into its one-line
message or drop them. Commands only: the library itself never redirects a descriptor.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings


class Captured:
    """Context manager: fd 2 and Python warnings go to a buffer; `.text()` reads them."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self._warnings = []
        self._saved = None
        self._catcher = None

    def __enter__(self):
        sys.stderr.flush()
        self._file.seek(0)
        self._file.truncate()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self._catcher = warnings.catch_warnings(record=True)
        self._warnings = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False

    def lines(self) -> list[str]:
        """What was caught, one cleaned-up line per message (warnings first)."""
        self._file.seek(0)
        native = self._file.read(64 << 10).decode("utf-8", "replace").splitlines()
        caught = [str(w.message) for w in self._warnings] + native
        return [" ".join(line.split()) for line in caught if line.strip()]

    def close(self):
        self._file.close()


def is_noise(line: str) -> bool:
    """Lines that say nothing to a user (LiteRT's delegate banner)."""
    return line.startswith("INFO: ")
