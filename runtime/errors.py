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
