"""The exceptions edgedb raises: one small hierarchy, rooted at :class:`EdgeDBError`.

Each also derives from the built-in exception a Python user would expect (``ValueError``
for a bad value, ``TypeError`` for a bad type, ``ImportError`` for a missing extra), so
``except ValueError`` keeps working.
"""


class EdgeDBError(Exception):
    """Base class of every error edgedb raises on purpose."""


class InvalidInputError(EdgeDBError, ValueError):
    """An argument has the right type but a value edgedb cannot use."""


class InvalidInputTypeError(EdgeDBError, TypeError):
    """An argument has a type edgedb does not accept."""


class MissingDependencyError(EdgeDBError, ImportError):
    """An optional dependency (an extra such as ``tensorrt``) is not installed."""


class ModelError(EdgeDBError):
    """A model file is missing, unreadable, or not a DBNet edgedb can run."""


class EngineError(ModelError):
    """A TensorRT engine or its sidecar is missing, damaged, or built for another TensorRT
    version or GPU; the message says how to rebuild it."""


class ServingError(EdgeDBError):
    """A Triton server could not be found, started or reached, or refused a request; the
    message carries the server's own reason."""
