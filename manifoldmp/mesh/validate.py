"""Argument validation at the public boundary (DESIGN rule 10).

Each validator either returns a clean, contiguous copy of its input in the library's dtype
policy (float64 coordinates, int64 indices) or raises a :class:`~manifoldmp.errors.MeshError`
/ :class:`~manifoldmp.errors.ParameterError` whose message names the offending value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from manifoldmp.errors import MeshError, ParameterError

__all__ = [
    "validate_choice",
    "validate_faces",
    "validate_halfedge_lengths",
    "validate_int",
    "validate_positions",
    "validate_positive",
    "validate_vertex_array",
]


def _as_array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds here
        raise MeshError(f"{name} must be array-like, got {type(value).__name__}: {exc}") from exc
    if arr.dtype == object:
        raise MeshError(f"{name} must be a numeric array, got a ragged or object array")
    return arr


def validate_positions(value: Any, name: str = "vertices", dim: int = 3) -> np.ndarray:
    """Return ``value`` as a float64 ``(N, dim)`` array after checking shape and finiteness.

    Parameters
    ----------
    value : (N, dim) array_like
        Coordinates.
    name : str
        Name used in error messages.
    dim : int
        Expected number of columns.

    Returns
    -------
    (N, dim) ndarray of float64

    Raises
    ------
    MeshError
        Wrong shape, no rows, a non-numeric dtype, or a NaN/inf entry (its row is named).

    Examples
    --------
    >>> validate_positions([[0, 0, 0], [1, 0, 0]]).dtype
    dtype('float64')
    >>> validate_positions([[0, 0, 0], [0, float("inf"), 0]], name="v")
    Traceback (most recent call last):
    ...
    manifoldmp.errors.MeshError: v has a non-finite value (nan or inf) in row 1: [ 0. inf  0.]
    """
    arr = _as_array(value, name)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise MeshError(f"{name} must have shape (N, {dim}), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise MeshError(f"{name} is empty: shape {tuple(arr.shape)}; need at least one row")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise MeshError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise MeshError(f"{name} must be real, got complex dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.nonzero(~finite.all(axis=1))[0][0])
        raise MeshError(
            f"{name} has a non-finite value (nan or inf) in row {row}: {out[row]}"
        )
    return out


def validate_faces(value: Any, n_vertices: int, name: str = "faces") -> np.ndarray:
    """Return ``value`` as an int64 ``(F, 3)`` array of vertex indices in ``[0, n_vertices)``.

    Parameters
    ----------
    value : (F, 3) array_like of int
        Triangle vertex indices.
    n_vertices : int
        Number of vertices the indices refer to.
    name : str
        Name used in error messages.

    Returns
    -------
    (F, 3) ndarray of int64

    Raises
    ------
    MeshError
        Wrong shape (polygons must be triangulated first), no faces, non-integer values, or an
        index that is negative or ``>= n_vertices`` (the face row and the value are named).

    Examples
    --------
    >>> validate_faces([[0, 1, 2]], 3).tolist()
    [[0, 1, 2]]
    >>> validate_faces([[0, 1, 5]], 3)
    Traceback (most recent call last):
    ...
    manifoldmp.errors.MeshError: faces[0] = [0 1 5] has index 5 outside [0, 3) (3 vertices)
    """
    arr = _as_array(value, name)
    if arr.ndim != 2 or arr.shape[1] != 3:
        hint = " (triangulate polygons first)" if arr.ndim == 2 and arr.shape[1] > 3 else ""
        raise MeshError(f"{name} must have shape (F, 3), got shape {tuple(arr.shape)}{hint}")
    if arr.shape[0] == 0:
        raise MeshError(f"{name} is empty: shape {tuple(arr.shape)}; need at least one triangle")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            row = int(np.nonzero(~(np.isfinite(arr) & (arr == np.round(arr))).all(axis=1))[0][0])
            raise MeshError(f"{name} must hold integer indices; row {row} is {arr[row]}")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise MeshError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (out < 0) | (out >= n_vertices)
    if bad.any():
        row, col = (int(k[0]) for k in np.nonzero(bad))
        raise MeshError(
            f"{name}[{row}] = {out[row]} has index {out[row, col]} outside "
            f"[0, {n_vertices}) ({n_vertices} vertices)"
        )
    return out


def validate_halfedge_lengths(value: Any, n_faces: int, name: str = "edge_lengths") -> np.ndarray:
    """Return per-face edge lengths as a float64 ``(F, 3)`` array.

    ``value[f, c]`` is the length of the edge from ``faces[f, c]`` to ``faces[f, (c + 1) % 3]``.

    Raises
    ------
    MeshError
        Wrong shape, a non-finite entry or a length that is not strictly positive.
    """
    arr = validate_positions(value, name=name, dim=3)
    if arr.shape[0] != n_faces:
        raise MeshError(f"{name} must have shape ({n_faces}, 3), one row per face; got {arr.shape}")
    bad = arr <= 0
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        raise MeshError(f"{name}[{row}] = {arr[row]} has a length <= 0; lengths must be positive")
    return arr


def validate_vertex_array(value: Any, n: int, name: str, *, dtype: type = np.float64) -> np.ndarray:
    """Return a finite ``(n,)`` array (one value per vertex or point).

    Raises
    ------
    ParameterError
        Wrong shape or a non-finite entry.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.shape != (n,):
        raise ParameterError(f"{name} must have shape ({n},) or be a scalar, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ParameterError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        idx = int(np.nonzero(~np.isfinite(out))[0][0])
        raise ParameterError(f"{name}[{idx}] = {out[idx]} is not finite")
    return out


def validate_int(value: Any, name: str, *, minimum: int | None = None,
                 maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking its type and range.

    Raises
    ------
    ParameterError
        ``value`` is not an integer (bools are rejected) or lies outside the range.

    Examples
    --------
    >>> validate_int(3, "k", minimum=1)
    3
    >>> validate_int(1.5, "k")
    Traceback (most recent call last):
    ...
    manifoldmp.errors.ParameterError: k must be an integer, got 1.5 (float)
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ParameterError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ParameterError(f"{name} must be <= {maximum}, got {value}")
    return value


def validate_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float that is > 0 (or >= 0 with ``allow_zero``).

    Raises
    ------
    ParameterError
        Not a real number, not finite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        kind = type(value).__name__
        raise ParameterError(f"{name} must be a real number, got {value!r} ({kind})")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ParameterError(f"{name} must be finite and {bound}, got {value}")
    return value


def validate_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises
    ------
    ParameterError
        Listing the allowed values.
    """
    choices = tuple(choices)
    if value not in choices:
        raise ParameterError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)
