"""Checks the project's long-running commands (effnet-export, effnet-quant-report,
effnet-bench, effnet-eval) make on their arguments before any work: a typo fails in a
second with one line, not with a traceback after minutes of calibration or timing.
Imports neither torch nor onnx, so the benchmark commands can use it without them."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from effnet_lite.backends import KIND_BY_SUFFIX
from effnet_lite.errors import first_line, needs_extra
from effnet_lite.variants import UnknownVariantError, get_variant



def positive_ints(text: str) -> list[int]:
    """argparse type for "1,2,4"."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (e.g. 1,2), "
                                         f"not {text!r}")
    return values


def positive_int(text: str) -> int:
    """argparse type for a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def check_model_files(parser: argparse.ArgumentParser, paths) -> None:
    for path in map(Path, paths):
        if not path.is_file():
            parser.error(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
        if path.suffix.lower() not in KIND_BY_SUFFIX:
            parser.error(f"{path}: not a model file (expected .tflite or .onnx)")


def output_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (its folder is missing or read-only, or it is
    a folder), or None."""
    path = Path(path)
    if path.is_dir():
        return "is a directory"
    parent = path.resolve().parent
    if not parent.is_dir():
        return f"output folder {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"cannot write to {parent} (permission denied)"
    return None


def check_output(parser: argparse.ArgumentParser, path: Path | None, flag: str) -> None:
    """The file `flag` names can be written (so a run's figures are not lost at its end)."""
    problem = output_problem(path) if path is not None else None
    if problem:
        parser.error(f"{flag} {path}: {problem}")


def variant_list(parser: argparse.ArgumentParser, text: str, flag: str, untrained_ok: bool,
                 no_weights_hint: str) -> list[str]:
    """The canonical names in a comma-separated variant list given with `flag`; PyTorch must
    be installed, and each variant must have bundled weights unless untrained models are
    acceptable (`no_weights_hint`, with {name} for the variant, says what to do instead)."""
    names = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            names.append(get_variant(item).name)
        except UnknownVariantError as e:
            parser.error(f"{flag}: {e}")
    if names:
        try:
            import torch  # noqa: F401  (needed anyway: a missing or broken install fails here, not mid-run)
        except ImportError as e:
            parser.exit(2, needs_extra(parser.prog, f"{flag} (PyTorch does not import: {first_line(e)})", "export") + "\n")
    if names and not untrained_ok:
        from .weights import WEIGHT_PACKAGES
        for name in names:
            if name not in WEIGHT_PACKAGES:
                parser.error(f"{flag} {name}: no pretrained weights are bundled for {name} "
                             f"(only for {', '.join(WEIGHT_PACKAGES)}); "
                             + no_weights_hint.format(name=name))
    return names


def read_json_report(parser: argparse.ArgumentParser, path: Path, flag: str, key: str) -> dict:
    """A JSON file another of our commands wrote, with `key` at its top level."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        parser.error(f"{flag} {path}: no such file")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        parser.error(f"{flag} {path}: not readable JSON ({str(e).splitlines()[0]})")
    if not isinstance(report, dict) or key not in report:
        parser.error(f"{flag} {path}: no {key!r} in it (expected the --json output of effnet-eval)")
    return report


def write_text(path: Path, text: str, prog: str) -> bool:
    """Write `path`; on failure say so in one line (the run's figures are already printed)."""
    try:
        path.write_text(text)
    except OSError as e:
        print(f"{prog}: error: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return False
    return True
