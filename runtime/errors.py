"""Exceptions the runtime raises for expected failures (each message is one line)."""


class RuntimeErrorBase(Exception):
    """Base class: an expected failure with a user-facing one-line message."""


class ImageError(RuntimeErrorBase, ValueError):
    """An input could not be read as an image."""


class ModelError(RuntimeErrorBase, ValueError):
    """A model file is missing, corrupt, or not an image classifier."""


class BackendUnavailableError(RuntimeErrorBase, ImportError):
    """No installed inference backend can run this model file."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line (or its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# How each optional part of the distribution is installed (torch first: the CPU wheel, or a
# bare requirement would pull CUDA)
INSTALL = {extra: f"pip install torch==2.13.0 && pip install 'effnet-lite-edge[{extra}]'"
           for extra in ("export", "train")}


def needs_extra(prog: str, what: str, extra: str) -> str:
    """The one line a command prints (then exits 2) when `what` needs an extra not installed."""
    how = INSTALL.get(extra, f"pip install 'effnet-lite-edge[{extra}]'")
    return f"{prog}: error: {what} needs the '{extra}' extra: {how}"
