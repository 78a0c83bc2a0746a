"""Fused CPU kernels of the eigensolver's Gram-Schmidt passes: ``C = Q^H W``, ``W -= Q C``.

The block Lanczos loop of :mod:`~manifoldmp.spectral.eigen` projects every new block
``W : (V, b)`` (``b`` = 8) out of its whole basis ``Q : (V, n)`` (``n`` = 176-296), in two
products that each read all of ``Q``. They are the largest share of the solver's time, and
BLAS handles these shapes poorly: the coefficient product reduces over the long dimension
``V`` with a thin operand on each side, and the update writes a thin block. Through torch's
gemm (100k vertices, ``n`` = 232, 2 cores) they take 11-14 and 17-19 ms, 10-16 GB/s where a
plain read of ``Q`` runs at 60 GB/s. No library has a kernel for them, so this module is
one, by hand (numba):

* Each thread takes a contiguous range of rows, in sub-blocks of :data:`ROWS` rows, so the
  sub-block of ``W`` stays in the core's cache while the columns of ``Q`` stream by once.
* Register blocking: four columns of ``Q`` against four of ``W`` (16 running sums for the
  coefficients, 16 coefficients held for the update), so each loaded element of ``Q``
  serves four multiply-adds.
* The coefficient sums of each thread are added at the end (``(threads, n, b)``, small).

Measured as above: 7.8 against 11.8 ms for the coefficients, 8.0 against 17.5 ms for the
update (real). Complex blocks take the same real kernels on real views: with ``Q`` and ``W``
read as ``(2V, .)`` real arrays (re and im rows interleaved),

* ``Re(Q^H W) = Q_r^T W_r`` and ``Im(Q^H W) = Q_r^T W'_r`` with ``W'`` the block times ``-i``
  (a ``(V, b)`` copy), so one real product with ``2b`` columns gives both (28 against
  48 ms);
* ``W -= Q C``: one real update of ``[W_r | 0]`` by ``[Re C | Im C]`` leaves
  ``W_r - Q_r Re(C)`` and ``-Q_r Im(C)``; the second belongs to the other row of each
  (re, im) pair, with the sign of ``i^2`` on the real one, which one pass over the
  ``(V, b)`` block adds in (31 against 52 ms for torch's ``zgemm``).

The sums run in another order than BLAS's (results agree to rounding; the tests hold the
kernels to numpy's products). Without numba, or in a forked child (see
:func:`~manifoldmp.spectral.fused.fused_available`), :func:`project_out` returns ``None`` and
the caller keeps torch's products.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from manifoldmp.errors import ParameterError
from manifoldmp.spectral import fused

__all__ = ["coefficients", "project_out", "release_scratch", "subtract_product", "usable"]

log = logging.getLogger(__name__)

#: Rows per sub-block of a thread's range: the ``(ROWS, b)`` block of ``W`` (256 kB real at
#: ``b`` = 8) stays in L2 while four 32 kB column pieces of ``Q`` stream by (100k torus,
#: ``n`` = 232: 7.8 ms at 4096 rows, 9.1 at 256, 8.3 at 16384).
ROWS = 4096

#: Least ``V * n`` for which the kernels are used. One full pass (coefficients and update,
#: ``b`` = 8), torch against the kernels: real 0.17 against 0.11 ms at 10242 x 16, 1.6 against
#: 0.95 ms at 10242 x 160; complex 0.37 against 0.45 ms at 10242 x 16, 1.8 against 1.3 ms at
#: 10242 x 64 (below about this size numba's parallel launch and the pair layouts dominate).
MIN_SIZE = 1 << 18

_FAST = {"reassoc", "contract"}  # reassociated sums: what lets LLVM vectorize the reductions

if fused.numba is not None:
    from numba import prange

    @fused._jit(inline="always")
    def _four(X, a, e, j):  # pragma: no cover - jit
        """Rows ``a:e`` of columns ``j`` to ``j + 3`` of ``X`` (views)."""
        return X[a:e, j], X[a:e, j + 1], X[a:e, j + 2], X[a:e, j + 3]

    @fused._jit(fastmath=_FAST)
    def _coef_block(Q, W, a, e, out):  # pragma: no cover - jit
        """``out += Q[a:e]^T W[a:e]`` for real ``Q : (V, n)``, ``W : (V, b)``."""
        n = Q.shape[1]
        b = W.shape[1]
        m = e - a
        j = 0
        while j + 4 <= n:
            q0, q1, q2, q3 = _four(Q, a, e, j)
            c = 0
            while c + 4 <= b:
                w0, w1, w2, w3 = _four(W, a, e, c)
                s00 = s01 = s02 = s03 = 0.0
                s10 = s11 = s12 = s13 = 0.0
                s20 = s21 = s22 = s23 = 0.0
                s30 = s31 = s32 = s33 = 0.0
                for i in range(m):
                    x0 = q0[i]
                    x1 = q1[i]
                    x2 = q2[i]
                    x3 = q3[i]
                    y0 = w0[i]
                    y1 = w1[i]
                    y2 = w2[i]
                    y3 = w3[i]
                    s00 += x0 * y0
                    s01 += x0 * y1
                    s02 += x0 * y2
                    s03 += x0 * y3
                    s10 += x1 * y0
                    s11 += x1 * y1
                    s12 += x1 * y2
                    s13 += x1 * y3
                    s20 += x2 * y0
                    s21 += x2 * y1
                    s22 += x2 * y2
                    s23 += x2 * y3
                    s30 += x3 * y0
                    s31 += x3 * y1
                    s32 += x3 * y2
                    s33 += x3 * y3
                out[j, c] += s00
                out[j, c + 1] += s01
                out[j, c + 2] += s02
                out[j, c + 3] += s03
                out[j + 1, c] += s10
                out[j + 1, c + 1] += s11
                out[j + 1, c + 2] += s12
                out[j + 1, c + 3] += s13
                out[j + 2, c] += s20
                out[j + 2, c + 1] += s21
                out[j + 2, c + 2] += s22
                out[j + 2, c + 3] += s23
                out[j + 3, c] += s30
                out[j + 3, c + 1] += s31
                out[j + 3, c + 2] += s32
                out[j + 3, c + 3] += s33
                c += 4
            j += 4
        # the remainders: columns of W beyond the last group of four against the grouped
        # columns of Q, then the last columns of Q against all of W
        c0 = b - b % 4
        for jj in range(j):
            q = Q[a:e, jj]
            for c in range(c0, b):
                w = W[a:e, c]
                s = 0.0
                for i in range(m):
                    s += q[i] * w[i]
                out[jj, c] += s
        for jj in range(j, n):
            q = Q[a:e, jj]
            for c in range(b):
                w = W[a:e, c]
                s = 0.0
                for i in range(m):
                    s += q[i] * w[i]
                out[jj, c] += s

    @fused._jit(fastmath=_FAST)
    def _update_block(Q, C, W, a, e):  # pragma: no cover - jit
        """``W[a:e] -= Q[a:e] C`` for real ``Q : (V, n)``, ``C : (n, b)``, ``W : (V, b)``."""
        n = Q.shape[1]
        b = W.shape[1]
        m = e - a
        j = 0
        while j + 4 <= n:
            q0, q1, q2, q3 = _four(Q, a, e, j)
            c = 0
            while c + 4 <= b:
                w0, w1, w2, w3 = _four(W, a, e, c)
                a00 = C[j, c]
                a01 = C[j, c + 1]
                a02 = C[j, c + 2]
                a03 = C[j, c + 3]
                a10 = C[j + 1, c]
                a11 = C[j + 1, c + 1]
                a12 = C[j + 1, c + 2]
                a13 = C[j + 1, c + 3]
                a20 = C[j + 2, c]
                a21 = C[j + 2, c + 1]
                a22 = C[j + 2, c + 2]
                a23 = C[j + 2, c + 3]
                a30 = C[j + 3, c]
                a31 = C[j + 3, c + 1]
                a32 = C[j + 3, c + 2]
                a33 = C[j + 3, c + 3]
                for i in range(m):
                    x0 = q0[i]
                    x1 = q1[i]
                    x2 = q2[i]
                    x3 = q3[i]
                    w0[i] -= (x0 * a00 + x1 * a10) + (x2 * a20 + x3 * a30)
                    w1[i] -= (x0 * a01 + x1 * a11) + (x2 * a21 + x3 * a31)
                    w2[i] -= (x0 * a02 + x1 * a12) + (x2 * a22 + x3 * a32)
                    w3[i] -= (x0 * a03 + x1 * a13) + (x2 * a23 + x3 * a33)
                c += 4
            j += 4
        c0 = b - b % 4
        for jj in range(j):
            q = Q[a:e, jj]
            for c in range(c0, b):
                w = W[a:e, c]
                cc = C[jj, c]
                for i in range(m):
                    w[i] -= q[i] * cc
        for jj in range(j, n):
            q = Q[a:e, jj]
            for c in range(b):
                w = W[a:e, c]
                cc = C[jj, c]
                for i in range(m):
                    w[i] -= q[i] * cc

    @fused._jit(parallel=True)
    def _coef(Q, W, threads, rows):  # pragma: no cover - jit
        V = Q.shape[0]
        part = np.zeros((threads, Q.shape[1], W.shape[1]))
        chunk = (V + threads - 1) // threads
        for t in prange(threads):
            r1 = min(V, (t + 1) * chunk)
            for a in range(t * chunk, r1, rows):
                _coef_block(Q, W, a, min(a + rows, r1), part[t])
        return part.sum(axis=0)

    @fused._jit(parallel=True)
    def _update(Q, C, W, threads, rows):  # pragma: no cover - jit
        V = Q.shape[0]
        chunk = (V + threads - 1) // threads
        for t in prange(threads):
            r1 = min(V, (t + 1) * chunk)
            for a in range(t * chunk, r1, rows):
                _update_block(Q, C, W, a, min(a + rows, r1))


    @fused._jit(parallel=True)
    def _to_pairs(Wr, S, mode, threads):  # pragma: no cover - jit
        """``S[:, :b] = Wr``; ``S[:, b:]`` = ``-i W`` (``mode`` 0) or zero (1), real rows."""
        half = Wr.shape[0] // 2
        b = Wr.shape[1]
        chunk = (half + threads - 1) // threads
        for t in prange(threads):
            i1 = min(half, (t + 1) * chunk)
            for c in range(b):
                for i in range(t * chunk, i1):
                    re = Wr[2 * i, c]
                    im = Wr[2 * i + 1, c]
                    S[2 * i, c] = re
                    S[2 * i + 1, c] = im
                    if mode == 0:
                        S[2 * i, b + c] = im
                        S[2 * i + 1, b + c] = -re
                    else:
                        S[2 * i, b + c] = 0.0
                        S[2 * i + 1, b + c] = 0.0

    @fused._jit(parallel=True)
    def _from_pairs(S, Wr, threads):  # pragma: no cover - jit
        """``W = [W_r - Q_r Re C] + i [-Q_r Im C]``, the second half moved to its partner row."""
        half = Wr.shape[0] // 2
        b = Wr.shape[1]
        chunk = (half + threads - 1) // threads
        for t in prange(threads):
            i1 = min(half, (t + 1) * chunk)
            for c in range(b):
                for i in range(t * chunk, i1):
                    Wr[2 * i, c] = S[2 * i, c] - S[2 * i + 1, b + c]
                    Wr[2 * i + 1, c] = S[2 * i + 1, c] + S[2 * i, b + c]


#: dtypes whose kernels this process has used (the first use compiles or loads them).
_LOADED: set[str] = set()

#: One scratch block per thread for the complex kernels, kept between calls (a fresh
#: ``(2V, 2b)`` block is paged in on every call: 25 MB at 100k vertices, b = 8), released by
#: :func:`release_scratch`.
_SCRATCH = threading.local()


def _scratch(rows: int, cols: int) -> np.ndarray:
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = np.empty(rows * cols)
        _SCRATCH.buf = buf
    return buf[: rows * cols].reshape((rows, cols), order="F")


def release_scratch() -> None:
    """Free this thread's scratch block (the eigensolver calls it when it returns)."""
    _SCRATCH.buf = None


def _check(Q: np.ndarray, W: np.ndarray) -> None:
    if not fused.fused_available():
        raise fused.FusedUnavailable("the Gram-Schmidt kernels need numba in a non-forked "
                                     "process (see fused_available)")
    if Q.ndim != 2 or W.ndim != 2 or Q.shape[0] != W.shape[0]:
        raise ParameterError(f"Q (V, n) and W (V, b) must share V, got {Q.shape} and {W.shape}")
    if Q.dtype != W.dtype or Q.dtype not in (np.float64, np.complex128):
        raise ParameterError(f"Q and W must both be float64 or complex128, got {Q.dtype} and "
                             f"{W.dtype}")
    if not (Q.flags.f_contiguous and W.flags.f_contiguous):
        raise ParameterError("Q and W must be Fortran-ordered (columns contiguous)")


def _real_rows(X: np.ndarray) -> np.ndarray:
    """The ``(2V, n)`` real view of a Fortran-ordered complex ``(V, n)`` array (re, im rows)."""
    return X.T.view(np.float64).T


def coefficients(Q: np.ndarray, W: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``C = Q^H W`` by the fused kernel.

    Parameters
    ----------
    Q : (V, n) ndarray
        float64 or complex128, Fortran-ordered.
    W : (V, b) ndarray
        Same dtype, Fortran-ordered.
    threads : int, optional
        Row ranges (default: torch's thread count, within numba's pool).

    Returns
    -------
    C : (n, b) ndarray
    """
    _check(Q, W)
    T = fused._threads() if threads is None else max(1, int(threads))
    if Q.dtype == np.float64:
        return _coef(Q, W, T, ROWS)
    b = W.shape[1]
    Wr = _real_rows(W)
    S = _scratch(Wr.shape[0], 2 * b)
    _to_pairs(Wr, S, 0, T)      # [W | -i W]: (re, im) -> (im, -re)
    P = _coef(_real_rows(Q), S, T, ROWS)
    C = np.empty((Q.shape[1], b), dtype=np.complex128)
    C.real = P[:, :b]
    C.imag = P[:, b:]
    return C


def subtract_product(Q: np.ndarray, C: np.ndarray, W: np.ndarray,
                     threads: int | None = None) -> None:
    """``W -= Q C`` in place by the fused kernel.

    Parameters
    ----------
    Q : (V, n) ndarray
        float64 or complex128, Fortran-ordered.
    C : (n, b) ndarray
        Real for real ``Q``.
    W : (V, b) ndarray
        Same dtype as ``Q``, Fortran-ordered; overwritten.
    threads : int, optional
    """
    _check(Q, W)
    C = np.asarray(C)
    if C.shape != (Q.shape[1], W.shape[1]):
        raise ParameterError(f"C must have shape {(Q.shape[1], W.shape[1])}, got {C.shape}")
    T = fused._threads() if threads is None else max(1, int(threads))
    if Q.dtype == np.float64:
        if np.iscomplexobj(C):
            raise ParameterError("a real Q and W take a real C")
        _update(Q, np.ascontiguousarray(C, dtype=np.float64), W, T, ROWS)
        return
    # complex: on the (2V, .) real views, with S = [W_r | 0] and coefficients [Re C | Im C],
    # one real update leaves S = [W_r - Q_r Re(C) | -Q_r Im(C)]; the product with Im C belongs
    # to the other half of each (re, im) row pair, with the sign of i^2 on the real half
    b = W.shape[1]
    Wr = _real_rows(W)
    S = _scratch(Wr.shape[0], 2 * b)
    _to_pairs(Wr, S, 1, T)
    Cs = np.empty((C.shape[0], 2 * b))
    Cs[:, :b] = C.real
    Cs[:, b:] = C.imag
    _update(_real_rows(Q), Cs, S, T, ROWS)
    _from_pairs(S, Wr, T)


def usable(Q: np.ndarray, W: np.ndarray) -> bool:
    """Whether :func:`project_out` takes these arrays (else the caller's products run).

    Parameters
    ----------
    Q : (V, n) ndarray
    W : (V, b) ndarray

    Returns
    -------
    bool
        Both 2-D, of one dtype (float64 or complex128), Fortran-ordered, ``V n`` at least
        :data:`MIN_SIZE`, and the kernels can run in this process.
    """
    return (Q.ndim == 2 and W.ndim == 2 and Q.shape[0] * Q.shape[1] >= MIN_SIZE
            and Q.dtype == W.dtype and Q.dtype in (np.float64, np.complex128)
            and Q.flags.f_contiguous and W.flags.f_contiguous and fused.fused_available())


def project_out(W: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W - Q C, C)`` with ``C = Q^H W``, ``W`` overwritten; ``None`` where not usable.

    Parameters
    ----------
    W : (V, b) ndarray
        Overwritten.
    Q : (V, n) ndarray
        Orthonormal columns; both float64 or both complex128, Fortran-ordered.

    Returns
    -------
    (W, C) : tuple of (V, b) and (n, b) ndarrays, or None
        ``None`` when :func:`usable` is False (nothing was computed).
    """
    if not usable(Q, W):
        return None
    if Q.dtype.name not in _LOADED:
        _LOADED.add(Q.dtype.name)
        log.info("Gram-Schmidt kernels (%s): first use in this process; numba compiles them "
                 "once (about 7 s) or loads them from its disk cache", Q.dtype.name)
    C = coefficients(Q, W)
    subtract_product(Q, C, W)
    return W, C
