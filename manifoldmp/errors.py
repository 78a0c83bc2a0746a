"""Exceptions raised by manifoldmp.

Every user-facing error is a :class:`ValueError` subclass so that code written against the
usual numeric-library conventions (``except ValueError``) keeps working, while callers that
want to tell mesh problems from bad parameters can catch the narrower classes.
"""

from __future__ import annotations

__all__ = ["ManifoldmpError", "MeshError", "ParameterError"]


class ManifoldmpError(ValueError):
    """Base class of every error manifoldmp raises on bad input."""


class MeshError(ManifoldmpError):
    """Vertex positions, faces, edge lengths or point coordinates are unusable.

    The message names the offending value (shape, index, row) and what was expected.
    """


class ParameterError(ManifoldmpError):
    """A numerical or option argument is out of range or of the wrong kind."""
