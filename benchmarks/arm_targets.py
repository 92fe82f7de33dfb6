"""The Raspberry Pi boards the emulation check runs (benchmarks/arm_emulation.py): Debian
userland, Python, the CPU qemu emulates and the /proc/cpuinfo it must see, the pip extra."""
from __future__ import annotations

from dataclasses import dataclass

# /proc/cpuinfo as the boards show it: qemu passes the host's x86 one through otherwise,
# and the CPU detection in XNNPACK / onnxruntime crashes on it
PI5_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
               "crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n"
               "CPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n")
PI4_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
               "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
               "CPU revision\t: 3\n\n")
PI4_32BIT_CPUINFO = ("processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n"
                     "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 "
                     "lpae evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\n"
                     "CPU part\t: 0xd08\nCPU revision\t: 3\n\nHardware\t: BCM2835\n")
AARCH64_TAGS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                "manylinux2014_aarch64")
ARMV7_TAGS = ("manylinux_2_34_armv7l", "manylinux_2_31_armv7l", "manylinux_2_28_armv7l",
              "manylinux_2_17_armv7l", "manylinux2014_armv7l", "linux_armv7l")


@dataclass(frozen=True)
class Target:
    name: str
    board: str
    arch: str                   # Debian architecture
    suite: str                  # Debian release
    python: str
    qemu: str
    cpu: str                    # qemu -cpu: pinned (qemu's default "max" exposes SME on arm64)
    cpuinfo: str
    extra: str                  # the pip extra a user installs on this board
    tags: tuple
    debian_packages: tuple = ()  # numpy/Pillow from Debian where PyPI has no wheels
    formats: tuple = ("tflite",)

    @property
    def backend_only(self) -> bool:
        return bool(self.debian_packages)


TARGETS = {t.name: t for t in (
    Target("pi5-bookworm", "Pi 5, 64-bit Pi OS (bookworm)", "arm64", "bookworm", "3.11",
           "qemu-aarch64-static", "cortex-a76", PI5_CPUINFO, "tflite,onnx,serve", AARCH64_TAGS,
           formats=("tflite", "onnx")),
    Target("pi4-bookworm", "Pi 4, 64-bit Pi OS (bookworm)", "arm64", "bookworm", "3.11",
           "qemu-aarch64-static", "cortex-a72", PI4_CPUINFO, "tflite,onnx", AARCH64_TAGS,
           formats=("tflite", "onnx")),
    Target("pi5-trixie", "Pi 5, 64-bit Pi OS (trixie)", "arm64", "trixie", "3.13",
           "qemu-aarch64-static", "cortex-a76", PI5_CPUINFO, "tflite", AARCH64_TAGS),
    # qemu-arm has no cortex-a72 model; "max" is an ARMv8 core in AArch32 mode, as a Pi 4
    # runs 32-bit Pi OS
    Target("pi4-armhf", "Pi 4, 32-bit Pi OS (bookworm armhf)", "armhf", "bookworm", "3.11",
           "qemu-arm-static", "max", PI4_32BIT_CPUINFO, "tflite-legacy", ARMV7_TAGS,
           debian_packages=("python3-numpy", "python3-pil")),
)}

# What `pip install` resolves to on the boards, checked per Python: (Python, tags, extra).
# 32-bit Pi OS: PyPI has no armv7 numpy/Pillow wheels (Pi OS takes them from apt or
# piwheels), so there only the backend is resolved; Debian's numpy/Pillow fill the rest.
# effnet-serve's extra on the newer Pythons (3.11's is installed on the emulated Pi 5).
RESOLUTIONS = [(py, AARCH64_TAGS, extra) for py in ("3.11", "3.12", "3.13") for extra in ("tflite", "onnx")] \
    + [(py, AARCH64_TAGS, "tflite,serve") for py in ("3.12", "3.13")] + [("3.11", ARMV7_TAGS, "tflite-legacy")]
