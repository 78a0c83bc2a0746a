"""Tangent frames shared by meshes and point clouds."""

from __future__ import annotations

import numpy as np

__all__ = ["tangent_frames", "wrap_angle"]


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Wrap angles to ``(-pi, pi]``."""
    return np.pi - np.mod(np.pi - angle, 2.0 * np.pi)


def tangent_frames(normals: np.ndarray, reference: np.ndarray, gauge: np.ndarray,
                   tol: float) -> np.ndarray:
    """Frames ``(e1, e2, n)`` with ``e1`` along ``reference`` projected on the tangent plane.

    Parameters
    ----------
    normals : (N, 3) ndarray
        Unit normals.
    reference : (N, 3) ndarray
        Reference direction per point (e.g. the first edge); where its tangential part is
        shorter than ``tol``, any unit vector orthogonal to the normal is used instead.
    gauge : (N,) ndarray
        Counter-clockwise rotation of ``e1`` about the normal.
    tol : float

    Returns
    -------
    (N, 3, 3) ndarray
        Rows ``e1, e2 = n x e1, n`` per point.
    """
    n = normals
    ref = reference - np.einsum("ij,ij->i", reference, n)[:, None] * n
    norm = np.linalg.norm(ref, axis=1)
    bad = norm <= tol
    if bad.any():
        alt = np.where(np.abs(n[bad, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        alt = alt - np.einsum("ij,ij->i", alt, n[bad])[:, None] * n[bad]
        ref[bad] = alt
        norm[bad] = np.linalg.norm(alt, axis=1)
    e1 = ref / norm[:, None]
    e2 = np.cross(n, e1)
    ca, sa = np.cos(gauge)[:, None], np.sin(gauge)[:, None]
    e1r = ca * e1 + sa * e2
    return np.stack([e1r, np.cross(n, e1r), n], axis=1)
