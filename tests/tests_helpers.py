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
