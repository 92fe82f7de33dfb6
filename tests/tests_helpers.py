"""Small helpers shared by tests."""
from pathlib import Path


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted export would leave (".name.XXXX.suffix")."""
    return sorted(p.name for p in Path(folder).rglob(".*") if p.is_file())


# Prepended to a `python -c` script: makes the heavy packages unimportable in that process.
BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "onnxruntime", "onnxscript", "tensorflow"}:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Block())
"""


def run_module(module: str, *args, timeout: int = 300) -> tuple[int, str, str]:
    """Run a command's module in a fresh process, as a user runs the entry point."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def unavailable(reason: str, module_level: bool = False):
    """A dependency that `.ci/run` installs is missing: a skip with the reason on a developer's
    machine, a failure in CI (CI=true), where a broken install must not pass as skips."""
    import os

    import pytest
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it, so the CI install is broken", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_module(name: str, reason: str):
    """The module, or `unavailable` (a skip here, a failure in CI) for the whole test module."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as e:
        unavailable(f"{reason}: {name} does not import ({e})", module_level=True)


def readline_within(stream, seconds: float, what: str) -> str:
    """One line from a child's pipe, or a clear failure after `seconds` (never a hung CI)."""
    import select

    import pytest
    ready, _, _ = select.select([stream], [], [], seconds)
    if not ready:
        pytest.fail(f"no {what} within {seconds:g} s", pytrace=False)
    return stream.readline()


def wait_for(condition, seconds: float, what: str, every: float = 0.05) -> None:
    """Poll `condition()` until it holds, or fail clearly after `seconds` (no fixed sleeps
    that decide an order on a loaded machine)."""
    import time

    import pytest
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:g} s", pytrace=False)
        time.sleep(every)


def cached_venv(name: str, packages: list[str], what: str):
    """The python of a virtual environment in the temp folder holding `packages` (built once,
    from the package registry, as a user's pip install gets them), or `unavailable`."""
    import shutil
    import subprocess
    import tempfile
    import venv
    env_dir = Path(tempfile.gettempdir()) / name
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.create(env_dir, with_pip=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               *packages], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            shutil.rmtree(env_dir, ignore_errors=True)
            unavailable(f"cannot install {what} here (no wheel or no registry): {done.stderr.strip()[-300:]}")
    return python


def write_video(path: Path, frames, fps: int, codec: str, pix_fmt: str) -> None:
    """A video of `fps` frames of each RGB frame (arrays or PIL images) in turn, with PyAV
    (the container follows the file name)."""
    import av
    import numpy as np
    first = np.asarray(frames[0])
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], pix_fmt
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")
            for _ in range(fps):
                for packet in stream.encode(picture):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
