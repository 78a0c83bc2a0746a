"""Heat kernel signatures, scalar and bundle (Sun, Ovsjanikov and Guibas 2009; THEORY.md 1.5)."""

from __future__ import annotations

from typing import Any

import numpy as np

from manifoldmp.errors import ParameterError

__all__ = ["heat_kernel_signature", "heat_trace"]


def _times(times: Any) -> np.ndarray:
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ParameterError(f"times must be a positive finite scalar or 1-D array, got {times!r}")
    return t


def heat_kernel_signature(domain: Any, times: Any, *, n: int = 0, k: int | None = None,
                          heat: Any = None) -> np.ndarray:
    """Diagonal of the heat kernel ``k_t(i, i)`` in the area measure, for several times.

    ``k_t(i, i) = sum_k exp(-t lambda_k) |phi_k(i)|^2`` with ``M``-orthonormal eigenvectors. For
    ``n = 0`` it is the heat kernel signature; for ``n != 0`` it is its bundle counterpart, the
    diagonal of the type-``n`` connection heat kernel, which is real, positive and
    gauge-invariant (``|phi_k(i)|`` does not depend on the frame at ``i``).

    Parameters
    ----------
    domain : Surface or PointCloud
    times : float or (T,) array_like
        Positive times (the truncation error at ``t`` is below ``exp(-t lambda_k)``).
    n : int
    k : int, optional
        Eigenpairs used (default: the :class:`~manifoldmp.HeatKernel` default).
    heat : HeatKernel, optional
        Reuse a solver and its cached eigenpairs (its ``n`` is used).

    Returns
    -------
    (V, T) ndarray of float64
    """
    from manifoldmp.spectral.heat import HeatKernel

    t = _times(times)
    H = heat if heat is not None else HeatKernel(domain, n, k=k)
    lam, phi = H.eigenpairs()
    w = np.exp(-np.outer(lam + H.casimir_shift, t))  # (k, T)
    return (np.abs(phi) ** 2) @ w


def heat_trace(domain: Any, times: Any, *, n: int = 0, k: int | None = None,
               heat: Any = None) -> np.ndarray:
    """``Tr exp(-t (M^-1 L_n + kappa n^2)) = sum_k exp(-t lambda_k)`` for several times.

    Truncated to the computed eigenpairs (exact with ``k = V``). Compare with the expansion
    ``A / (4 pi t) + chi / 6 + O(t)`` of THEORY.md 6.6.

    Returns
    -------
    (T,) ndarray
    """
    from manifoldmp.spectral.heat import HeatKernel

    t = _times(times)
    H = heat if heat is not None else HeatKernel(domain, n, k=k)
    lam, _ = H.eigenpairs()
    return np.exp(-np.outer(t, lam + H.casimir_shift)).sum(axis=1)
