"""What pip gives the emulated boards (benchmarks/arm_emulation.py): a wheel of this
checkout, installed for a board's Python and platform into folders for PYTHONPATH (cached
under the temp folder), and what `pip install 'effnet-lite-edge[EXTRA]'` would resolve to
there. pip runs here on x86; nothing is emulated.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .arm_targets import Target

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "effnet-arm"


class EmulationError(RuntimeError):
    pass


def build_wheel(out: Path) -> Path:
    """A wheel of this checkout (one build at a time: setuptools builds inside the tree)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    with open(DEFAULT_CACHE / ".wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # setuptools reuses build/ and packs whatever an older build left there (once: the
        # four old top-level packages): start from an empty one
        shutil.rmtree(ROOT / "build", ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                               "--no-build-isolation", "-w", str(out), str(ROOT)], capture_output=True, text=True)
    if done.returncode:
        raise EmulationError(f"cannot build a wheel of {ROOT}: {done.stderr[-1500:]}")
    return next(out.glob("effnet_lite_edge-*.whl"))


def pip_for(python: str, tags: tuple, args: list[str]) -> list[str]:
    """pip run here on x86, resolving for another Python and platform."""
    platforms = [a for tag in tags for a in ("--platform", tag)]
    return [sys.executable, "-m", "pip", *args, "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", *platforms, "--disable-pip-version-check", "--quiet"]


DEPENDENCIES_PERIOD = 7 * 86400     # then pip resolves the dependencies afresh (new releases)


def _pip_target(target: Target, folder: Path, reqs: list[str]) -> Path:
    """`pip install --target` for the board into `folder`, built beside it and renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    done = subprocess.run(pip_for(target.python, target.tags, ["install", "--target", str(tmp), *reqs]),
                          capture_output=True, text=True)
    if done.returncode:
        raise EmulationError(f"pip could not install for {target.name}: {done.stderr[-1500:]}")
    tmp.rename(folder)
    return folder


def wheel_digest(wheel: Path) -> str:
    """The wheel's content (member names and bytes), not its zip bytes: every build stamps
    new times, and a test must not replace the folder another test is running from."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
    return h.hexdigest()[:16]


def install_runtime(target: Target, wheel: Path, cache: Path) -> tuple[Path, Path]:
    """The runtime as `pip install 'effnet-lite-edge[EXTRA]'` gives it, as two folders for
    PYTHONPATH: the wheel itself (every new build) and the dependencies pip resolved for it
    (cached by the wheel's requirements for a week: unpacking numpy and the backends for
    each commit's wheel cost CI a minute). On armhf only the backend comes from PyPI
    (numpy<2 and Pillow are Debian's, as on Pi OS)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = sorted(line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:"))
    base = cache / target.name
    if target.backend_only:
        dep_reqs, extra_args = ["tflite-runtime>=2.14"], ["--no-deps"]
    else:
        dep_reqs, extra_args = [f"{wheel}[{target.extra}]"], []
    key = hashlib.sha256(json.dumps([target.extra, target.backend_only, requires]).encode()).hexdigest()[:16]
    deps = base / f"deps-{key}-{int(time.time() // DEPENDENCIES_PERIOD)}"
    if not deps.is_dir():
        for old in base.glob("deps-*"):     # two periods old: no running test still uses it
            if time.time() - old.stat().st_mtime > 2 * DEPENDENCIES_PERIOD:
                shutil.rmtree(old, ignore_errors=True)
        _pip_target(target, deps, [*extra_args, *dep_reqs])
        for ours in [*deps.glob("effnet_lite"), *deps.glob("effnet_lite_edge-*.dist-info")]:
            shutil.rmtree(ours)     # the wheel's own folder below comes first on the path anyway
    site = base / f"site-{wheel_digest(wheel)}"
    if not site.is_dir():
        for old in base.glob("site-*"):
            shutil.rmtree(old, ignore_errors=True)
        _pip_target(target, site, ["--no-deps", str(wheel)])
    return site, deps


def resolve(python: str, tags: tuple, extra: str, wheel: Path, dest: Path) -> list[str]:
    """The wheels `pip install 'effnet-lite-edge[EXTRA]'` would install there (binary only;
    downloaded once into `dest`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("effnet_lite_edge-*.whl"):   # pip would reuse an older build's metadata
        stale.unlink()
    if extra == "tflite-legacy":
        reqs, deps = [str(wheel), "tflite-runtime>=2.14"], ["--no-deps"]
    else:
        reqs, deps = [f"{wheel}[{extra}]"], []
    cmd = [a for a in pip_for(python, tags, ["download", "-d", str(dest), *deps, *reqs]) if a != "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise EmulationError(f"no binary install for Python {python} {tags[0]} [{extra}]: "
                             f"{done.stderr.strip().splitlines()[-1:]}")
    # pip names each wheel it saved or found already downloaded: name-version-tags.whl
    wheels = re.findall(r"(?:Saved|File was already downloaded) \S*?([^/\s]+\.whl)", done.stdout)
    return sorted({"==".join(w.split("-")[:2]) for w in wheels})
