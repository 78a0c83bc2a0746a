"""Intrinsic triangle quantities computed from edge lengths only (THEORY.md 1.1-1.3).

All functions take per-face edge lengths ``l : (F, 3)`` with ``l[f, c]`` the length of the edge
from corner ``c`` to corner ``c + 1`` of face ``f``; corner ``c`` lies between edges ``c`` and
``c + 2`` and faces edge ``c + 1``. Nothing here reads positions, so the same code serves
embedded meshes, intrinsic meshes (flat tori) and mollified degenerate input.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "corner_angles",
    "corner_cotans",
    "corner_terms",
    "face_areas",
    "mollify_lengths",
]

_NEXT = np.array([1, 2, 0])
_PREV = np.array([2, 0, 1])


def face_areas(l: np.ndarray) -> np.ndarray:
    """Triangle areas by Heron's formula in Kahan's cancellation-free ordering.

    Parameters
    ----------
    l : (F, 3) ndarray
        Edge lengths.

    Returns
    -------
    (F,) ndarray
        Areas, clipped at zero for lengths that violate the triangle inequality.

    Examples
    --------
    >>> float(face_areas(np.array([[3.0, 4.0, 5.0]]))[0])
    6.0
    """
    s = np.sort(l, axis=1)
    c, b, a = s[:, 0], s[:, 1], s[:, 2]
    prod = (a + (b + c)) * (c - (a - b)) * (c + (a - b)) * (a + (b - c))
    return 0.25 * np.sqrt(np.maximum(prod, 0.0))


def corner_terms(l: np.ndarray) -> np.ndarray:
    """``a^2 + b^2 - o^2`` per corner (twice the dot product of its two edge vectors)."""
    sq = l * l
    return sq + sq[:, _PREV] - sq[:, _NEXT]


def corner_angles(l: np.ndarray, areas: np.ndarray, terms: np.ndarray | None = None
                  ) -> np.ndarray:
    """Interior angles ``theta[f, c]`` at each corner, ``atan2(4 A, a^2 + b^2 - o^2)``.

    ``terms`` may pass precomputed :func:`corner_terms`.

    Returns
    -------
    (F, 3) ndarray
        Angles in ``[0, pi]``; they sum to ``pi`` per face.
    """
    t = corner_terms(l) if terms is None else terms
    return np.arctan2(4.0 * areas[:, None], t)


def corner_cotans(l: np.ndarray, areas: np.ndarray, terms: np.ndarray | None = None
                  ) -> np.ndarray:
    """Cotangents of the corner angles, ``(a^2 + b^2 - o^2) / (4 A)``.

    Returns
    -------
    (F, 3) ndarray
        Finite wherever the area is positive (see :func:`mollify_lengths`).
    """
    t = corner_terms(l) if terms is None else terms
    return t / (4.0 * areas[:, None])


def mollify_lengths(l: np.ndarray, factor: float) -> tuple[np.ndarray, float]:
    """Intrinsic mollification of Sharp & Crane (2020), "A Laplacian for nonmanifold meshes".

    If some triangle is degenerate (its triangle-inequality slack ``a + b - c`` falls below
    ``delta = factor * mean(l)``), every length is increased by the same
    ``eps = delta - min slack``, so that all triangles get positive area while lengths shared by
    neighbouring faces stay equal. Meshes without near-degenerate faces are returned unchanged.

    Parameters
    ----------
    l : (F, 3) ndarray
        Edge lengths.
    factor : float
        Relative slack; 0 disables mollification.

    Returns
    -------
    lengths : (F, 3) ndarray
    eps : float
        The amount added (0.0 when nothing changed).
    """
    if factor <= 0:
        return l, 0.0
    delta = factor * float(l.mean())
    slack = float((l.sum(axis=1) - 2.0 * l.max(axis=1)).min())
    if slack >= delta:
        return l, 0.0
    eps = delta - slack
    return l + eps, eps
