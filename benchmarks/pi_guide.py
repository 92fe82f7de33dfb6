"""The Raspberry Pi guide's install commands, run verbatim on an emulated Pi 5.

The commands are read from docs/raspberry-pi.md's block marked `<!-- pi-guide -->` and run by bash in a
Pi OS bookworm arm64 userland (Debian bookworm with python3-venv and python3-pip, as Pi OS
ships them) under qemu-user, entered with chroot. binfmt_misc runs every ARM program the
commands start (pip, venv's ensurepip) through the emulator too, so pip runs on the board: it
resolves this checkout's wheel (PIP_FIND_LINKS, a folder holding only it) and everything else
from the package registry, as a newcomer's pip would.

The venv is cached by the wheel's content (and for a week, then the registry is asked again):
with a cached venv only the commands after the install run. `--control` runs the commands
without the venv lines in a fresh home, where pip must stop with Debian's
"externally-managed-environment".

    python -m effnet_lite.benchmarks.pi_guide --model lite0_int8.tflite --photo photo.jpg
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .arm_emulation import build_rootfs, log
from .arm_packages import DEFAULT_CACHE, ROOT, EmulationError, build_wheel, wheel_digest
from .arm_targets import TARGETS

# the README block of each board's guide, and the userland it runs in: Pi OS ships python3-venv
# and python3-pip; the 32-bit guide's `sudo apt install` line names what the userland is built
# with (apt cannot run in an unpacked userland: the line is checked, not run)
GUIDES = {
    "64-bit": ("<!-- pi-guide -->", dataclasses.replace(
        TARGETS["pi5-bookworm"], name="pi5-bookworm-guide", debian_packages=("python3-venv", "python3-pip"))),
    "32-bit": ("<!-- pi-guide 32-bit -->", dataclasses.replace(
        TARGETS["pi4-armhf"], name="pi4-armhf-guide",
        debian_packages=("python3-venv", "python3-pip", "python3-numpy", "python3-pil"))),
}
APT = re.compile(r"^\s*sudo apt install ((?:[\w.+-]+ ?)+)$")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
INSTALL = re.compile(r"^\s*(python3 -m venv|pip install)\b")
VENV_LINES = re.compile(r"^\s*(python3 -m venv|\. |source )")
PERIOD = 7 * 86400


def guide_commands(board: str = "64-bit", readme: Path = ROOT / "docs" / "raspberry-pi.md") -> list[str]:
    """The lines of the first ```bash block after the board's mark in the Raspberry Pi guide."""
    mark = GUIDES[board][0]
    text = readme.read_text()
    at = text.find(mark)
    block = re.search(r"```bash\n(.*?)```", text[at:], re.S) if at >= 0 else None
    if block is None:
        raise EmulationError(f"{readme}: no ```bash block after {mark}")
    return [line for line in block.group(1).splitlines() if line.strip()]


def ensure_binfmt(qemu: str) -> None:
    """Register the emulator with binfmt_misc (as Debian's qemu-user-binfmt does at boot),
    with the F flag: it is opened now, so it works inside the chroot."""
    arch = qemu.removeprefix("qemu-").removesuffix("-static")
    if not BINFMT.joinpath("register").exists():
        done = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if done.returncode:
            raise EmulationError(f"cannot mount binfmt_misc: {done.stderr.strip()}")
    entry = BINFMT / f"qemu-{arch}"
    if entry.exists() and "flags: " in entry.read_text() and "F" in entry.read_text().split("flags: ")[1].split()[0]:
        return
    conf = Path(f"/usr/lib/binfmt.d/qemu-{arch}.conf")
    if not conf.is_file():
        raise EmulationError(f"no {conf} (apt-get install qemu-user-static)")
    if entry.exists():
        entry.write_text("-1")          # registered without F: replace it
    rule = conf.read_text().strip()
    if not rule.endswith("F"):
        rule += "F"
    BINFMT.joinpath("register").write_text(rule)


def run(model: Path, photo: Path, board: str = "64-bit", control: bool = False, cache: Path = DEFAULT_CACHE,
        timeout: int = 3600) -> dict:
    """Run the board's guide commands; the result: how far they got, their output, the time."""
    _, target = GUIDES[board]
    commands = guide_commands(board)
    for line in commands:
        if (apt := APT.match(line)) and sorted(apt.group(1).split()) != sorted(target.debian_packages):
            raise EmulationError(f"the guide installs {apt.group(1)}, the userland has {' '.join(target.debian_packages)}")
    commands = [c for c in commands if not APT.match(c)]
    root = build_rootfs(target, cache)
    ensure_binfmt(target.qemu)
    wheel = build_wheel(cache / "wheel")
    wheels = root / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir()
    shutil.copy(wheel, wheels)
    # what Pi OS has configured and this userland (unpacked, no maintainer scripts) lacks: the
    # resolver and the CA bundle (update-ca-certificates'), taken from this machine, which
    # reaches the package registry with them
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
    key = f"{wheel_digest(wheel)}-{int(time.time() // PERIOD)}"
    home = Path("/home") / (f"control-{time.time_ns()}" if control else f"pi-{key}")
    host_home = root / home.relative_to("/")
    if not control:
        for old in (root / "home").glob("pi-*"):
            if old.name != home.name:
                shutil.rmtree(old, ignore_errors=True)
    cached = (host_home / ".guide-installed").is_file()
    host_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, host_home / "lite0_int8.tflite")
    shutil.copy(photo, host_home / "photo.jpg")
    if control:
        commands = [c for c in commands if not VENV_LINES.match(c)]
    elif cached:
        commands = [c for c in commands if not INSTALL.match(c)]
    steps = []
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb",
           "QEMU_CPU": target.cpu, "PIP_FIND_LINKS": "/wheels", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_PROGRESS_BAR": "off"}
    script = "cd ~\n" + "".join(f"{c}\necho \"@@ step $? done\"\n" for c in commands)
    start = time.perf_counter()
    log(f"pi guide: {len(commands)} command(s) on the emulated {target.board}"
        + (" (venv cached)" if cached else "") + (" without the venv lines (control)" if control else ""))
    # /sys as a board has one (the emulated CPU's /proc/cpuinfo is the userland's own file):
    # without it, the CPU detection under XNNPACK picks other int8 kernels than a Pi's, whose
    # outputs differ by a few steps (measured: 38.5 % where x86 and the other checks give 37.2 %)
    sys_dir = root / "sys"
    sys_dir.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", "-o", "ro", "/sys", str(sys_dir)], check=True)
    try:
        done = subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
                               "/bin/bash", "-e", "-c", script], capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["umount", str(sys_dir)], check=False)
    seconds = time.perf_counter() - start
    if done.returncode == 0 and not control:
        (host_home / ".guide-installed").write_text(json.dumps({"wheel": wheel.name}))
    if control:
        shutil.rmtree(host_home, ignore_errors=True)
    steps = done.stdout.count("@@ step 0 done")
    return {"commands": commands, "exit": done.returncode, "completed": steps, "seconds": round(seconds, 1),
            "cached_venv": cached, "stdout": done.stdout.replace("@@ step 0 done\n", ""),
            "stderr_tail": done.stderr[-3000:], "wheel": wheel.name}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", type=Path, required=True, help="an int8 .tflite file (copied as lite0_int8.tflite)")
    p.add_argument("--photo", type=Path, required=True, help="a photo (copied as photo.jpg)")
    p.add_argument("--board", choices=list(GUIDES), default="64-bit", help="which guide (64-bit: Pi 5 arm64)")
    p.add_argument("--control", action="store_true", help="without the venv lines: pip must refuse")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("pi_guide: needs root (debootstrap, chroot, binfmt_misc)", file=sys.stderr)
        return 2
    try:
        result = run(args.model, args.photo, args.board, args.control)
    except EmulationError as e:
        print(f"pi_guide: {e}", file=sys.stderr)
        return 2
    print(result["stdout"], end="")
    print(result["stderr_tail"], file=sys.stderr, end="")
    print(f"pi guide: exit {result['exit']} after {result['completed']} of {len(result['commands'])} command(s), "
          f"{result['seconds']:.0f} s{' (venv cached)' if result['cached_venv'] else ''}", file=sys.stderr)
    return 0 if result["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
