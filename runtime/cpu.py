"""This CPU's int8 class: which integer dot-product instructions onnxruntime's kernels use.

int8 kernels differ between CPU classes, and so can an int8 ONNX file's answers: x86 CPUs
without VNNI (AVX2, AVX-512 without VNNI) multiply uint8 by int8 with vpmaddubsw, which adds
two products in a saturating int16, so files whose weights allow a larger pair sum lose
accuracy there (our files are pair-safe: model_export/quantize.py). VNNI (vpdpbusd) sums in
int32; ARM (with or without dot-product instructions) and XNNPACK widen before adding.

The features come from numpy's own CPUID/HWCAP probe (the instructions this process may run,
right under an emulator too), falling back to /proc/cpuinfo (merge_features).
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Int8Class:
    name: str            # e.g. "x86-64 AVX2 (no VNNI)"
    saturates: bool      # u8 x s8 products summed two by two in int16


def _features() -> set:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:          # numpy < 2 keeps it in numpy.core
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found
        except ImportError:
            found = None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpuinfo = f.read(1 << 20)
    except OSError:
        cpuinfo = ""
    return merge_features(found, cpuinfo)


def merge_features(found: dict | None, cpuinfo: str) -> set:
    """The features this process may use: numpy's probe (`found`, name -> present: this process's
    own CPUID, right under an emulator), with AVX-VNNI, which numpy does not probe, from
    /proc/cpuinfo. cpuinfo describes the host, which under an emulator is another CPU: it is
    trusted only when it claims nothing the probe found missing."""
    # /proc/cpuinfo spells them avx2, avx512_vnni, avx_vnni, asimddp
    listed = {w.upper().replace("_", "") for w in cpuinfo.split()}
    if not found:
        return listed
    probed = {name for name, present in found.items() if present}
    if "AVXVNNI" in found or listed & (set(found) - probed):
        return probed
    return probed | (listed & {"AVXVNNI"})


def classify(machine: str, features: set) -> Int8Class:
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        if {"AVX512VNNI", "AVXVNNI"} & features:
            return Int8Class("x86-64 VNNI", False)
        if "AVX512BW" in features:
            return Int8Class("x86-64 AVX-512 (no VNNI)", True)
        if "AVX2" in features:
            return Int8Class("x86-64 AVX2 (no VNNI)", True)
        return Int8Class("x86-64 SSE4 (no AVX2)", False)
    if machine in ("aarch64", "arm64"):
        dot = "ASIMDDP" in features
        return Int8Class("arm64 with dot product" if dot else "arm64 (no dot product)", False)
    if machine.startswith("arm"):
        return Int8Class("arm32 NEON", False)
    return Int8Class(machine or "unknown", False)


@functools.lru_cache(maxsize=1)
def int8_class() -> Int8Class:
    """This machine's int8 class (probed once)."""
    return classify(platform.machine(), _features())
