"""Fused CPU kernels for the residual norms and Rayleigh quotients of a block of eigenpairs.

:func:`~manifoldmp.spectral.eigen.residuals` needs, per pair ``c``,
``sum_i |(L X)_ic - lambda_c m_i X_ic|^2 / m_i``. Through scipy it forms ``L X`` by row blocks
(one thread) and reduces the block with numpy: at 100k vertices and 128 pairs 51 ms real and
170 ms complex, and the eigensolver evaluates it after every Rayleigh-Ritz step. This kernel
makes one pass over the rows on all threads: each row's product is summed in the order of
scipy's CSR product (so each entry of the residual is the same number), the row's residual
formed and its weighted squares added to the thread's partial sums: 14 and 26 ms. Complex
blocks are read as interleaved real rows and the complex products written out in real
arithmetic. :func:`rayleigh_quotients` is the same pass reduced against the rows of ``X``
(``Re(x^H L x)`` and ``x^H M x``): the eigensolver's eigenvalues, 26 ms complex where scipy's
``L @ X`` and the dot products take 0.5 s. Without numba, or in a forked child, both return
``None`` and the caller keeps scipy's path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from manifoldmp.errors import ParameterError
from manifoldmp.spectral import fused

__all__ = ["rayleigh_quotients", "residual_sq"]

#: Least ``V k`` for which the kernel runs (below, scipy's path takes under a millisecond).
MIN_SIZE = 1 << 16

if fused.numba is not None:
    from numba import prange

    @fused._jit(inline="always")
    def _row_real(indptr, indices, data, X, i, acc):  # pragma: no cover - jit
        """``acc = (L X)[i]``, the entries summed in scipy's CSR order."""
        for c in range(X.shape[1]):
            acc[c] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            v = data[p]
            for c in range(X.shape[1]):
                acc[c] += v * X[j, c]

    @fused._jit(inline="always")
    def _row_complex(indptr, indices, dre, dim, Xv, i, ar, ai):  # pragma: no cover - jit
        """``ar + i ai = (L X)[i]`` for ``X`` read as interleaved real rows ``Xv``."""
        k = Xv.shape[1] // 2
        for c in range(k):
            ar[c] = 0.0
            ai[c] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            a = dre[p]
            b = dim[p]
            for c in range(k):
                xr = Xv[j, 2 * c]
                xi = Xv[j, 2 * c + 1]
                ar[c] += a * xr - b * xi
                ai[c] += a * xi + b * xr

    @fused._jit(parallel=True)
    def _res_real(indptr, indices, data, X, lam, mass, threads):  # pragma: no cover - jit
        V, k = X.shape
        part = np.zeros((threads, k))
        chunk = (V + threads - 1) // threads
        for t in prange(threads):
            acc = np.empty(k)
            for i in range(t * chunk, min(V, (t + 1) * chunk)):
                _row_real(indptr, indices, data, X, i, acc)
                mi = mass[i]
                inv = 1.0 / mi
                for c in range(k):
                    r = acc[c] - (mi * lam[c]) * X[i, c]
                    part[t, c] += r * r * inv
        return part.sum(axis=0)

    @fused._jit(parallel=True)
    def _res_complex(indptr, indices, dre, dim, Xv, lam, mass, threads):  # pragma: no cover
        V = Xv.shape[0]
        k = Xv.shape[1] // 2
        part = np.zeros((threads, k))
        chunk = (V + threads - 1) // threads
        for t in prange(threads):
            ar = np.empty(k)
            ai = np.empty(k)
            for i in range(t * chunk, min(V, (t + 1) * chunk)):
                _row_complex(indptr, indices, dre, dim, Xv, i, ar, ai)
                mi = mass[i]
                inv = 1.0 / mi
                for c in range(k):
                    rr = ar[c] - (mi * lam[c]) * Xv[i, 2 * c]
                    ri = ai[c] - (mi * lam[c]) * Xv[i, 2 * c + 1]
                    part[t, c] += (rr * rr + ri * ri) * inv
        return part.sum(axis=0)

    @fused._jit(parallel=True)
    def _quad_real(indptr, indices, data, X, mass, threads):  # pragma: no cover - jit
        V, k = X.shape
        part = np.zeros((threads, 2, k))
        chunk = (V + threads - 1) // threads
        for t in prange(threads):
            acc = np.empty(k)
            for i in range(t * chunk, min(V, (t + 1) * chunk)):
                _row_real(indptr, indices, data, X, i, acc)
                mi = mass[i]
                for c in range(k):
                    x = X[i, c]
                    part[t, 0, c] += x * acc[c]
                    part[t, 1, c] += mi * x * x
        return part.sum(axis=0)

    @fused._jit(parallel=True)
    def _quad_complex(indptr, indices, dre, dim, Xv, mass, threads):  # pragma: no cover
        V = Xv.shape[0]
        k = Xv.shape[1] // 2
        part = np.zeros((threads, 2, k))
        chunk = (V + threads - 1) // threads
        for t in prange(threads):
            ar = np.empty(k)
            ai = np.empty(k)
            for i in range(t * chunk, min(V, (t + 1) * chunk)):
                _row_complex(indptr, indices, dre, dim, Xv, i, ar, ai)
                mi = mass[i]
                for c in range(k):
                    xr = Xv[i, 2 * c]
                    xi = Xv[i, 2 * c + 1]
                    part[t, 0, c] += xr * ar[c] + xi * ai[c]   # Re(conj(x) (L x))
                    part[t, 1, c] += mi * (xr * xr + xi * xi)
        return part.sum(axis=0)


def _usable(L: Any, X: np.ndarray) -> bool:
    """Whether the kernels run on ``(L, X)``.

    They need numba in this process, a CSR ``L``, a C-ordered ``X`` of at least
    :data:`MIN_SIZE` entries, and both float64 or both complex128.
    """
    return bool(fused.fused_available() and sp.isspmatrix_csr(L) and X.flags.c_contiguous
                and X.shape[0] * X.shape[1] >= MIN_SIZE
                and ((L.dtype == np.float64 and X.dtype == np.float64)
                     or (L.dtype == np.complex128 and X.dtype == np.complex128)))


def residual_sq(L: sp.csr_matrix, mass: np.ndarray, lam: np.ndarray,
                X: np.ndarray, threads: int | None = None) -> np.ndarray | None:
    """``sum_i |(L X)_ic - lam_c m_i X_ic|^2 / m_i`` per column, or ``None`` where not usable.

    Parameters
    ----------
    L : (V, V) scipy.sparse.csr_matrix
        float64 or complex128.
    mass : (V,) ndarray of float64
    lam : (k,) ndarray of float64
    X : (V, k) ndarray
        C-ordered (rows contiguous: the kernel gathers rows), float64 for real ``L``,
        complex128 for complex ``L``.
    threads : int, optional
        Row ranges (default: torch's thread count, within numba's pool).

    Returns
    -------
    (k,) ndarray of float64 or None
        ``None`` without numba, in a forked child, for small or other-typed inputs (the
        caller computes it another way).

    Raises
    ------
    ParameterError
        Shapes of ``L``, ``X``, ``mass`` and ``lam`` that do not fit together.
    """
    X = np.asarray(X)
    mass = np.asarray(mass, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    if X.ndim != 2 or L.shape != (X.shape[0], X.shape[0]):
        raise ParameterError(f"X must be (V, k) with L of shape (V, V); got X {X.shape}, "
                             f"L {L.shape}")
    if mass.shape != (X.shape[0],) or lam.shape != (X.shape[1],):
        # the kernels index both without bounds checks: refuse a mismatch here
        raise ParameterError(f"mass must be ({X.shape[0]},) and lam ({X.shape[1]},); got "
                             f"{mass.shape} and {lam.shape}")
    if not _usable(L, X):
        return None
    T = fused._threads() if threads is None else max(1, int(threads))
    args: tuple[Any, ...] = (np.ascontiguousarray(lam), np.ascontiguousarray(mass), T)
    if L.dtype == np.float64:
        return _res_real(L.indptr, L.indices, L.data, X, *args)
    return _res_complex(L.indptr, L.indices, np.ascontiguousarray(L.data.real),
                        np.ascontiguousarray(L.data.imag), X.view(np.float64), *args)


def rayleigh_quotients(L: sp.csr_matrix, mass: np.ndarray, X: np.ndarray,
                       threads: int | None = None) -> np.ndarray | None:
    """``Re(x^H L x) / (x^H M x)`` per column in one fused pass, or ``None`` where not usable.

    The same pass over the rows as :func:`residual_sq` (each row of ``L X`` summed in scipy's
    CSR order), reduced against the row of ``X`` instead of into a residual. The eigensolver
    takes its eigenvalues from it; through scipy (``L @ X``, one thread, then the column dot
    products) the same numbers cost 0.5 s at 100k vertices and 128 complex columns.

    Parameters
    ----------
    L : (V, V) scipy.sparse.csr_matrix
        Hermitian, float64 or complex128.
    mass : (V,) ndarray of float64
    X : (V, k) ndarray
        C-ordered, float64 for real ``L``, complex128 for complex ``L``.
    threads : int, optional
        Row ranges (default: torch's thread count, within numba's pool).

    Returns
    -------
    (k,) ndarray of float64 or None
        ``None`` without numba, in a forked child, for small or other-typed inputs.

    Raises
    ------
    ParameterError
        Shapes of ``L``, ``X`` and ``mass`` that do not fit together.
    """
    X = np.asarray(X)
    mass = np.asarray(mass, dtype=np.float64)
    if X.ndim != 2 or L.shape != (X.shape[0], X.shape[0]) or mass.shape != (X.shape[0],):
        raise ParameterError(f"need L (V, V), mass (V,) and X (V, k); got L {L.shape}, "
                             f"mass {mass.shape}, X {X.shape}")
    if not _usable(L, X):
        return None
    T = fused._threads() if threads is None else max(1, int(threads))
    if L.dtype == np.float64:
        num, den = _quad_real(L.indptr, L.indices, L.data, X, np.ascontiguousarray(mass), T)
    else:
        num, den = _quad_complex(L.indptr, L.indices, np.ascontiguousarray(L.data.real),
                                 np.ascontiguousarray(L.data.imag), X.view(np.float64),
                                 np.ascontiguousarray(mass), T)
    if not np.all(den > 0):
        raise ParameterError(f"X has a zero column (column {int(np.argmin(den))}): its Rayleigh "
                             "quotient is undefined")
    return num / den
