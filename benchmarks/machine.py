"""A description of the machine and software a benchmark ran on."""
from __future__ import annotations

import importlib.metadata
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    versions = {}
    for dist in ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    from effnet_lite.cpu import int8_class
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "cpu_int8_class": int8_class().name,
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions}
