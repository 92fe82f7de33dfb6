"""Exceptions the runtime raises for expected failures (each message is one line)."""


class RuntimeErrorBase(Exception):
    """Base class: an expected failure with a user-facing one-line message."""


class ImageError(RuntimeErrorBase, ValueError):
    """An input could not be read as an image."""


class ModelError(RuntimeErrorBase, ValueError):
    """A model file is missing, corrupt, or not an image classifier."""


class BackendUnavailableError(RuntimeErrorBase, ImportError):
    """No installed inference backend can run this model file."""
