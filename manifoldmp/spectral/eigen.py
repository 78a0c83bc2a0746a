"""Generalized Hermitian eigenpairs of ``(L, M)`` with a lumped (diagonal) mass.

Why a hand-written solver: ``scipy.sparse.linalg.eigsh`` in shift-invert mode (what DiffusionNet
does) drives ARPACK through one single-vector solve at a time and BLAS-2 re-orthogonalization,
and for complex Hermitian ``L`` it silently switches to the non-symmetric Arnoldi code. The
solver here is a **block Lanczos method on the shift-inverted symmetric form with full
re-orthogonalization and thick restarts** (Saad, *Numerical Methods for Large Eigenvalue
Problems*, 2nd ed., sections 6.3 and 8.2):

* ``M`` is diagonal, so the pencil is symmetrised exactly, ``B = M^-1/2 L M^-1/2``; the wanted
  smallest eigenvalues of ``B`` are the largest of ``S = (B - sigma I)^-1``, applied through one
  sparse LU factorization (SuperLU in symmetric mode after a METIS nested-dissection ordering:
  half the solve cost of SuperLU's own minimum degree on meshes, see
  :func:`fill_reducing_ordering`).
* Blocks of ``b`` vectors go through the factorization together: one sparse product per level
  of the elimination tree for all columns (:mod:`~manifoldmp.spectral.supernodal`);
  each new block is orthogonalized against the last two blocks, then by one classical
  Gram-Schmidt pass against the whole basis (repeated while it cancels; both through the fused
  kernels of :mod:`~manifoldmp.spectral.gramschmidt`), then within itself by
  Cholesky-QR twice (BLAS-3; column-pivoted Householder QR for an ill-conditioned or
  rank-deficient block, see :func:`_orthonormalize`).
* The converged Ritz vectors are returned with their Rayleigh quotients and explicit residuals
  (one fused pass each, :mod:`~manifoldmp.spectral.residual_norms`), then inverse-iteration
  sweeps of the pairs still above ``tol`` remove the rounding noise the solves leave in the
  stiff directions (residuals at ARPACK's level). A sweep's Rayleigh-Ritz step stays within
  the swept pairs where their coupling to the others is below a tenth of ``tol``, which it is
  at the rounding level; the full step otherwise.
* The Rayleigh quotient ``T = Q^H S Q`` is filled from the orthogonalization coefficients, so
  checking convergence costs one small dense ``eigh``.
* The residual of a Ritz pair is known exactly without forming the vector: if
  ``S Q = Q T + Q_next R E^H`` then ``B x - lambda x = -(B - sigma) Q_next R y_last / theta``.
* Real (``n = 0``) and complex Hermitian (``n != 0``) problems run through the same code.

Failure raises :class:`EigenSolverError` with a diagnostic; the problem is never modified to make
it succeed (no added diagonal, no retry with a different matrix).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg as la
import scipy.linalg.blas as blas
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from manifoldmp.errors import ManifoldmpError, ParameterError
from manifoldmp.mesh.validate import validate_int, validate_positive
from manifoldmp.spectral import gramschmidt, residual_norms

__all__ = ["EigenResult", "EigenSolverError", "check_permutation", "count_below",
           "generalized_eigsh", "residuals"]

log = logging.getLogger(__name__)

#: Below this many unknowns (or when ``k`` is a large fraction of them) a dense solve is used.
DENSE_LIMIT = 2500

#: Cholesky-QR takes a block whose Cholesky factor's smallest diagonal entry, relative to the
#: largest column norm, is at least this (condition below about 1e6, where the Gram matrix's
#: condition stays far from 1 / eps); others go through column-pivoted Householder QR.
CHOLQR_RATIO = 1e-6


class EigenSolverError(ManifoldmpError):
    """The eigensolver did not converge or the factorization failed; the message says why."""


@dataclass(frozen=True)
class EigenResult:
    """Generalized eigenpairs ``L phi = lambda M phi``, ascending, ``Phi^H M Phi = I``.

    Attributes
    ----------
    eigenvalues : (k,) ndarray of float64
    eigenvectors : (V, k) ndarray, float64 or complex128
    residuals : (k,) ndarray
        ``||L phi - lambda M phi||_{M^-1} / max(|lambda|, floor)`` per pair (see
        :func:`residuals`).
    sigma : float
        Shift used for shift-invert (``nan`` for the dense path).
    n_solves : int
        Number of right-hand sides solved with the factorization.
    seconds : float
        Wall time.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray
    sigma: float
    n_solves: int
    seconds: float


def residuals(L: Any, mass: np.ndarray, eigenvalues: np.ndarray,
              eigenvectors: np.ndarray, *, floor: float | None = None) -> np.ndarray:
    """Relative residuals ``||L phi - lambda M phi||_{M^-1} / max(|lambda|, floor)``.

    The ``M^-1`` norm makes the residual the Euclidean residual of the symmetric form
    ``M^-1/2 L M^-1/2``, so it is independent of the mesh resolution and of the normalization
    ``Phi^H M Phi = I``. Eigenvalues near zero (constant functions, flat bundles, one per
    connected component) are measured against ``floor = max(1e-3 max|lambda|, 4 pi / area)``
    (the second is the first nonzero eigenvalue of a sphere of the same area), not themselves.

    Parameters
    ----------
    L : (V, V) sparse matrix
    mass : (V,) ndarray
    eigenvalues : (k,) ndarray
    eigenvectors : (V, k) ndarray
    floor : float, optional
        The scale for near-zero eigenvalues, where the pairs are part of a larger set (the
        default is computed from ``eigenvalues``).

    Returns
    -------
    (k,) ndarray of float64

    Raises
    ------
    ParameterError
        Shapes that do not fit together.
    """
    mass = np.asarray(mass, dtype=np.float64)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    L = sp.csr_matrix(L)
    eigenvectors = np.asarray(eigenvectors)
    V = L.shape[0]
    if L.shape != (V, V) or mass.shape != (V,) or eigenvectors.shape != (V, lam.size) \
            or lam.ndim != 1:
        raise ParameterError(f"need L (V, V), mass (V,), eigenvalues (k,) and eigenvectors "
                             f"(V, k); got {L.shape}, {mass.shape}, {lam.shape}, "
                             f"{eigenvectors.shape}")
    # one fused pass on all cores where it runs (C-ordered vectors; 100k vertices, 128 pairs:
    # 14 against 51 ms real, 26 against 170 ms complex), the same sums as below
    if floor is None:
        floor = _floor(lam, mass)
    else:
        floor = validate_positive(floor, "floor")
    num2 = residual_norms.residual_sq(L, mass, lam, eigenvectors)
    if num2 is not None:
        return np.sqrt(num2) / np.maximum(np.abs(lam), floor)
    num2 = np.zeros(len(lam))
    # in row blocks: whole (V, k) temporaries are fresh pages each call (100k vertices, 128
    # pairs: 125-720 ms against 60 ms)
    for a in range(0, L.shape[0], 4096):
        e = min(a + 4096, L.shape[0])
        R = L[a:e] @ eigenvectors
        R -= (mass[a:e, None] * lam[None, :]) * eigenvectors[a:e]
        num2 += np.einsum("ij,ij,i->j", R.conj(), R, 1.0 / mass[a:e]).real
    return np.sqrt(num2) / np.maximum(np.abs(lam), floor)


def _floor(lam: np.ndarray, mass: np.ndarray) -> float:
    """Scale for near-zero eigenvalues: 1e-3 of the largest, at least Weyl's ``4 pi / area``."""
    top = 1e-3 * float(np.max(np.abs(lam))) if lam.size else 0.0
    return max(top, 4.0 * np.pi / float(np.sum(mass)))


def _dense(L: Any, mass: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    Ld = L.toarray() if sp.issparse(L) else np.asarray(L)
    s = 1.0 / np.sqrt(mass)
    B = s[:, None] * Ld * s[None, :]
    B = 0.5 * (B + B.conj().T)
    lam, X = la.eigh(B, subset_by_index=[0, k - 1], driver="evr")
    return lam, s[:, None] * X


def fill_reducing_ordering(A: sp.spmatrix) -> np.ndarray | None:
    """Nested-dissection ordering (METIS) of the symmetric pattern of ``A``.

    On surface meshes it leaves a factor with a quarter less fill than SuperLU's minimum degree
    and halves the cost of a solve (100k-vertex torus: 4.9M against 6.4M entries in ``L``,
    9 against 22 ms per right-hand side). Falls back to the identity, with SuperLU's own
    minimum-degree ordering then used by :func:`_factorize`, when ``pymetis`` is missing.

    Parameters
    ----------
    A : (V, V) sparse matrix
        Only the pattern of ``A + A^T`` off the diagonal is used.

    Returns
    -------
    (V,) ndarray of int64 or None
        ``perm`` such that ``A[perm][:, perm]`` is factored with little fill; ``None`` when no
        ordering library is available (or the graph has no edges).
    """
    try:
        import pymetis
    except ImportError:  # pragma: no cover - pymetis is a dependency
        log.info("pymetis not installed: SuperLU's minimum-degree ordering is used")
        return None
    G = sp.csr_matrix(A, copy=True)
    G.data = np.ones_like(G.data, dtype=np.int8)
    G = (G + G.T).tocsr()
    G.setdiag(0)
    G.eliminate_zeros()
    if G.nnz == 0:
        return None
    G.sort_indices()
    adj = pymetis.CSRAdjacency(adj_starts=G.indptr.astype(np.int32),
                               adjacent=G.indices.astype(np.int32))
    perm, _ = pymetis.nested_dissection(adj)
    return np.asarray(perm, dtype=np.int64)


def check_permutation(perm: Any, n: int) -> np.ndarray:
    """``perm`` as an int64 array, or :class:`ParameterError` if it is not a permutation.

    A fill-reducing ordering passed in from outside must be checked: an index array with a
    repeat would factor a different matrix and give silently wrong solves or inertia.

    Parameters
    ----------
    perm : (n,) array_like of int
    n : int

    Returns
    -------
    (n,) ndarray of int64
    """
    perm = np.asarray(perm)
    if perm.shape != (n,) or perm.dtype.kind not in "iu" \
            or not np.array_equal(np.sort(perm), np.arange(n)):
        raise ParameterError(f"perm must be a permutation of 0..{n - 1}, got shape "
                             f"{perm.shape}, dtype {perm.dtype}")
    return perm.astype(np.int64, copy=False)


class SparseFactor:
    """Sparse LU of a Hermitian matrix with a symmetric fill-reducing permutation.

    ``solve`` takes and returns vectors in the original numbering. ``negative_pivots`` is the
    inertia (number of negative eigenvalues) when the factorization did not pivot.
    """

    #: Multi-column solves build the level solver by themselves once this many columns went
    #: through SuperLU: its set-up costs about as many SuperLU columns (100k-vertex torus:
    #: 0.29 s real, 39-40 columns of 7.5 ms; 0.37-0.65 s complex, 32-56 columns of 11.6
    #: ms), so the set-up at most doubles what a short job pays...
    AUTO_LEVEL_COLUMNS = 48
    #: ...on factors of at least this order (below, SuperLU's solves take well under a
    #: millisecond and the per-level overhead of the sparse products would dominate).
    AUTO_LEVEL_MIN_ORDER = 20_000

    def __init__(self, lu: Any, perm: np.ndarray | None, symmetric: bool, dtype: Any) -> None:
        self.lu = lu
        self.dtype = np.dtype(dtype)  # of the factored matrix (SuperLU does not expose it)
        self.perm = perm
        self.symmetric = symmetric
        self.shape = lu.shape
        self.levels: Any = None
        self._block_columns = 0  # columns solved by SuperLU in multi-column calls
        self._pivots: np.ndarray | None = None

    def prepare_block_solves(self) -> bool:
        """Build the level-scheduled block solver (:mod:`~manifoldmp.spectral.supernodal`).

        Multi-column solves then cost 1.3 ms per column instead of SuperLU's 7.5 (100k
        vertices, 8-64 columns real; complex 2-3 against 12); one-column solves stay with
        SuperLU.
        Returns whether the factor fits (a pivoted factor or a deep elimination tree does
        not, and keeps SuperLU's solve). ``solve`` calls it by itself after
        :attr:`AUTO_LEVEL_COLUMNS` columns on a large factor.
        """
        if self.levels is None and self.symmetric:
            from manifoldmp.spectral.supernodal import LevelSolver
            self.levels = LevelSolver.from_superlu(self.lu, self.pivots()) or False
        return bool(self.levels)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``A^-1 b`` for ``b : (V,) or (V, C)``."""
        b = np.asarray(b)
        if b.ndim == 2 and b.shape[1] > 1 and self.levels is None:
            if (self._block_columns >= self.AUTO_LEVEL_COLUMNS
                    and self.shape[0] >= self.AUTO_LEVEL_MIN_ORDER):
                self.prepare_block_solves()
            self._block_columns += b.shape[1]
        if (self.levels and b.ndim == 2 and b.shape[1] > 1
                and np.can_cast(b.dtype, self.levels.dtype)):  # complex b, real factor: SuperLU
            return self.levels.solve(b, self.perm)
        if self.perm is None:
            return np.asarray(self.lu.solve(np.asfortranarray(b)))
        y = np.asarray(self.lu.solve(np.asfortranarray(b[self.perm])))
        out = np.empty_like(y)
        out[self.perm] = y
        return out

    def pivots(self) -> np.ndarray:
        """``diag(U)``, the pivots ``D`` of ``L D L^H`` in symmetric mode (computed once).

        SuperLU hands out ``U`` only as a whole new matrix (0.1 s real, 0.4 s complex at 100k
        vertices), so the inertia and the level solver share this copy of its diagonal.
        """
        if self._pivots is None:
            self._pivots = np.asarray(self.lu.U.diagonal())
        return self._pivots

    def negative_pivots(self) -> int | None:
        """Inertia of a symmetric-mode factorization (``None`` if it pivoted)."""
        if not self.symmetric:
            return None
        return _negative_pivots(self.lu, self.pivots())


def _symmetric_lu(A: sp.spmatrix, perm: np.ndarray | None) -> Any:
    """SuperLU in symmetric mode, no off-diagonal pivoting, of ``A[perm][:, perm]``.

    Without ``perm`` SuperLU orders by minimum degree on ``A + A^T``. Raises ``RuntimeError``
    on an exactly singular pivot.
    """
    if perm is not None:
        return sla.splu(sp.csc_matrix(A)[perm][:, perm].tocsc(), permc_spec="NATURAL",
                        diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    return sla.splu(sp.csc_matrix(A), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                    options={"SymmetricMode": True})


def _factorize(A: sp.spmatrix, perm: np.ndarray | None = None) -> SparseFactor:
    """Sparse LU of a Hermitian matrix: symmetric mode first, partial pivoting as fallback.

    ``perm`` is a fill-reducing ordering to reuse (matrices with the same pattern); when not
    given, a nested-dissection ordering is computed.
    """
    if perm is None:
        perm = fill_reducing_ordering(A)
    try:
        lu = _symmetric_lu(A, perm)
        probe = lu.solve(np.ones(A.shape[0], dtype=A.dtype))
        if np.all(np.isfinite(probe)):
            return SparseFactor(lu, perm, True, A.dtype)
        reason = "non-finite solution"
    except RuntimeError as exc:  # exactly singular pivot
        reason = str(exc)
    log.info("symmetric-mode LU failed (%s); refactorizing with partial pivoting", reason)
    try:
        return SparseFactor(sla.splu(sp.csc_matrix(A), permc_spec="COLAMD"), None, False,
                            A.dtype)
    except RuntimeError as exc:
        raise EigenSolverError(
            f"the shifted matrix L - sigma M is singular to working precision ({exc}); "
            "pass a different sigma") from exc


def _project_out(W: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W - Q C, C)`` with ``C = Q^H W``; overwrites ``W`` when it is Fortran-ordered.

    Written for the shapes of a Krylov basis (``Q : (V, n)`` Fortran-ordered with ``V`` in the
    hundred thousands, ``W : (V, b)`` with small ``b``). Fortran-ordered blocks of at least
    :data:`~manifoldmp.spectral.gramschmidt.MIN_SIZE` entries go through the fused kernels of
    :mod:`~manifoldmp.spectral.gramschmidt` (V = 100k, n = 232, b = 8: 7.8 + 8.0 ms real,
    24-28 + 25-31 ms complex). Smaller ones, or all without numba, go through torch's gemm on
    both cores (the eigensolver holds OpenBLAS to one thread), ``C`` as ``(W^H Q)^H``, whose
    thin left factor the kernels handle better, and the update in place: 11 + 17 ms real and
    57 + 56 ms complex, against 16 + 17 ms for torch's ``Q^H W`` and 63-73 + 68 ms for
    numpy's one-thread complex BLAS. Other layouts
    through numpy: ``Q^T conj(W)`` for complex blocks (a conjugated copy of ``Q`` would cost
    more than the product), the update through BLAS ``gemm`` in place when ``Q`` is
    Fortran-ordered.
    """
    is_complex = np.iscomplexobj(Q)
    done = gramschmidt.project_out(W, Q)
    if done is not None:
        return done
    if Q.flags.f_contiguous and W.flags.f_contiguous and W.dtype == Q.dtype:
        Qt, Wt = torch.from_numpy(Q), torch.from_numpy(W)
        Ct = (Wt.mH @ Qt).mH.resolve_conj()
        torch.addmm(Wt, Qt, Ct, alpha=-1, out=Wt)
        return W, Ct.numpy()
    C = (Q.T @ W.conj()).conj() if is_complex else Q.T @ W
    if not Q.flags.f_contiguous or W.dtype != Q.dtype:
        return W - Q @ C, C
    gemm = blas.zgemm if is_complex else blas.dgemm
    W = gemm(-1.0, Q, np.asfortranarray(C), 1.0, np.asfortranarray(W), overwrite_c=True)
    return W, C


def _mm(A: np.ndarray, B: np.ndarray, adjoint: bool = False) -> np.ndarray:
    """``A @ B`` (``A^H @ B`` with ``adjoint``) for the large compute-bound products.

    These go through torch (its OpenMP threads, both cores) because the eigensolver holds
    OpenBLAS to one thread (see :func:`generalized_eigsh`). Measured at V = 100k: a restart's
    ``(V, 300) @ (300, 176)`` takes 208 against 285 ms real, 515 against 972 ms complex; a
    ``(V, 128)`` Gram matrix 44 against 47 ms real, 231 against 337 ms complex.
    """
    A, B = (X if min(X.strides) >= 0 else np.ascontiguousarray(X) for X in (A, B))
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    if adjoint and 2 * B.shape[1] <= A.shape[1]:
        # (B^H A)^H: the gemm kernels handle a thin left factor far better (V = 100k, A (V, 128)
        # C-ordered, B (V, 5): 19 against 279 ms real; A (V, 296), B (V, 8) Fortran-ordered
        # complex: 67 against 234 ms)
        return Bt.mH.matmul(At).mH.resolve_conj().numpy()
    return (At.mH if adjoint else At).matmul(Bt).resolve_conj().numpy()


def _ritz(T: np.ndarray, m: int, n_neg: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The ``m`` wanted eigenpairs of the small Hermitian ``T = Q^H S Q``, by ascending lambda.

    With ``S = (B - sigma)^-1``, ``lambda = sigma + 1 / theta``. The wanted ones are the
    negative ``theta`` (``lambda`` below ``sigma``; at most ``n_neg``, the number of such
    eigenvalues of ``S``, by Cauchy interlacing), then the largest positive ones. With
    ``n_neg = 0`` these are the ``m`` largest.

    LAPACK's MRRR driver (``evr``) on the whole spectrum, then a selection: for the projected
    matrices of the Lanczos loop (a few hundred rows) the subset mode is slower than the whole
    spectrum (order 288, top 176 pairs: 7.0 ms against 19.7, complex 16.9 against 27.5; about
    15 checks per solve of 128 pairs). Divide and conquer (``evd``, torch) is faster still but
    not accurate enough here: the convergence estimate reads the last rows of the eigenvectors
    of the smallest Ritz values, and its errors there (of the order of ``eps ||T|| / gap``)
    stalled the 100k-vertex torus at an estimated 2e-11 where MRRR reaches 1e-11.

    Parameters
    ----------
    T : (n, n) ndarray
        Hermitian; overwritten.
    m : int
        Number of pairs, ``m <= n``.
    n_neg : int
        Number of eigenvalues of ``S`` below zero (all wanted).

    Returns
    -------
    theta : (m,) ndarray
        Ritz values, wanted order (``sigma + 1 / theta`` ascending).
    Y : (n, m) ndarray
        Orthonormal eigenvectors, columns in the order of ``theta``.
    got_neg : int
        Number of negative Ritz values among them.
    """
    w, U = la.eigh(T, driver="evr", overwrite_a=True, check_finite=False)
    n = T.shape[0]
    neg = min(int(np.count_nonzero(w < 0)), n_neg, m) if n_neg else 0
    # negative theta: lambda ascending is theta descending towards zero from below
    idx = np.concatenate((np.arange(neg)[::-1], np.arange(n - 1, n - 1 - (m - neg), -1)))
    return w[idx], np.ascontiguousarray(U[:, idx]), neg


def _rotate(A: np.ndarray, B: np.ndarray, rows: int = 4096) -> np.ndarray:
    """``A[:, :m] = A @ B`` in place, for ``B : (n, m)`` with ``m <= n`` and ``A : (V, n)``.

    Row blocks of ``rows`` go through torch's gemm into one small buffer and are copied back,
    so the product needs no ``(V, m)`` temporary (a fresh one is paged in on every restart)
    and no full-size copy. V = 100k, a restart's ``(V, 288) @ (288, 176)``: 119 against
    255-284 ms real, 470 against 600-650 ms complex. Returns the view ``A[:, :m]``.
    """
    V, n = A.shape
    m = B.shape[1]
    if B.shape[0] != n or m > n:  # pragma: no cover - internal use only
        raise ValueError(f"cannot rotate a (V, {n}) block by a {B.shape} matrix in place")
    At, Bt = torch.from_numpy(A), torch.from_numpy(np.ascontiguousarray(B, dtype=A.dtype))
    buf = torch.empty((m, min(rows, V)), dtype=At.dtype).mT  # Fortran-ordered (rows, m)
    for a in range(0, V, rows):
        e = min(a + rows, V)
        out = buf[: e - a]
        torch.mm(At[a:e], Bt, out=out)
        At[a:e, :m] = out
    return A[:, :m]


def _scaled(X: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``s[:, None] * X`` as a new C-ordered array, through torch.

    Large fresh numpy blocks are slow to fault in on some machines: on the 2-core test VM the
    ``(100k, 128)`` complex product took 450 ms through numpy in the eigensolver against
    45 ms when its memory was reused, and 60-80 ms through torch's allocator either way.
    """
    return (torch.from_numpy(X) * torch.from_numpy(s)[:, None]).numpy()


def _empty_basis(V: int, n: int, dtype: Any) -> np.ndarray:
    """An uninitialized Fortran-ordered ``(V, n)`` block from torch's allocator.

    See :func:`_scaled`: the Krylov basis is the largest block of the solver, 474 MB complex
    at 100k vertices and 296 columns.
    """
    t = torch.empty((n, V), dtype=torch.complex128 if np.dtype(dtype).kind == "c"
                    else torch.float64)
    return t.numpy().T


def _frobenius(W: np.ndarray) -> float:
    """Frobenius norm through one BLAS dot of the memory (no temporaries; 2D norms allocate)."""
    return float(np.linalg.norm(W.ravel(order="K")))


def _gram(W: np.ndarray, big: bool) -> np.ndarray:
    """``W^H W``, Hermitian to the last bit.

    Thin Fortran-ordered blocks through BLAS ``herk`` / ``syrk`` (one thread here: V = 100k,
    b = 8, 1.9 against 3.2 ms complex through torch's gemm, 0.85 against 1.0 ms real); wide
    ones (Rayleigh-Ritz blocks) and other layouts through torch.
    """
    if big or not W.flags.f_contiguous or W.dtype not in (np.float64, np.complex128):
        G = _mm(W, W, adjoint=True)
        return 0.5 * (G + G.conj().T)
    if W.dtype == np.complex128:
        U = blas.zherk(1.0, W, trans=2)
    else:
        U = blas.dsyrk(1.0, W, trans=1)
    U = np.triu(U)   # the upper triangle is the result
    return U + np.triu(U, 1).conj().T


def _orthonormalize(W: np.ndarray, Q: np.ndarray | None,
                    rng: np.random.Generator, local: int = 0,
                    out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None,
                                                            np.ndarray]:
    """Orthonormalize ``W`` against ``Q`` (Gram-Schmidt) and within itself (CholQR2).

    ``Q[:, local:]`` holds the only directions ``W`` has in exact arithmetic (the last two
    Lanczos blocks; everything right after a restart). It is projected out first, then one
    full classical Gram-Schmidt pass against all of ``Q`` restores the orthogonality that
    rounding loses, repeated while it cancels (DGKS criterion). With ``local = 0`` this is CGS2.
    The full passes read the whole basis, so the local pass halves the memory traffic of the
    orthogonalization compared with CGS2 against everything.

    Within the block: Cholesky-QR until a sweep leaves it orthonormal (twice for a
    well-conditioned block). A block with condition above about 1e6 (:data:`CHOLQR_RATIO`)
    goes through column-pivoted Householder QR instead (:func:`_rank_revealing`); after a
    sweep that divided by small singular values the block is projected out of ``Q`` again,
    since the division amplifies the rounding-level components it keeps along ``Q``.

    Returns ``(W_orth, C, R)`` with ``W_in = Q C + W_orth R``. Columns that lose rank are
    replaced by random directions (then ``R`` has zero rows for them, the last ones of the
    pivoted order). ``out``, a Fortran-ordered block of ``W``'s shape and dtype (the basis'
    next columns), receives the last Cholesky-QR product where that is the last step, and is
    then returned as ``W_orth`` (one ``(V, b)`` copy less per block: 3-6 ms complex at 100k
    vertices).
    """
    C = None
    if Q is not None and Q.shape[1]:
        if Q.flags.f_contiguous and W.dtype == Q.dtype:
            # the passes below overwrite a Fortran-ordered block in place, through the fused
            # kernels (the solves return C-ordered blocks: one copy here, not one per pass)
            W = np.asfortranarray(W)
        C = np.zeros((Q.shape[1], W.shape[1]), dtype=W.dtype)
        before = _frobenius(W)
        if local > 0:
            W, Cl = _project_out(W, Q[:, local:])
            C[local:] = Cl
            after = _frobenius(W)
            if after < 0.7071 * before:  # cancellation: measure the full pass against this
                before = after
        W, Cf = _full_passes(W, Q, before)
        C += Cf
    b = W.shape[1]
    R = np.eye(b, dtype=W.dtype)
    big = b >= 32  # Rayleigh-Ritz blocks: compute-bound, through torch
    has_q = Q is not None and Q.shape[1] > 0
    sweeps = 0
    while True:
        sweeps += 1
        G = _gram(W, big)
        d = np.sqrt(np.maximum(np.real(np.diag(G)), 0.0))
        scale = np.where(d > 0, d, 1.0)
        try:
            Rc = la.cholesky(G / np.outer(scale, scale), lower=False) * scale[None, :]
            ratio = float(np.min(np.abs(np.diag(Rc)))) / max(float(np.max(d)), 1e-300)
            if ratio < CHOLQR_RATIO:
                raise la.LinAlgError("ill-conditioned block")
        except la.LinAlgError:
            W, R, C = _rank_revealing(W, R, Q if has_q else None, C, rng)
            ratio = 0.0  # normalize once more (the projection changed the columns)
        else:
            # LAPACK trtri, then the product through torch as (Rinv^T W^T)^T, which leaves a
            # Fortran-ordered block: V = 100k, b = 8, 0.3 ms real and 1.5 ms complex, against
            # 0.9 and 3.1 ms for BLAS gemm on one thread (solve_triangular: 2 + 13 ms)
            trtri = la.get_lapack_funcs("trtri", (Rc,))
            Rinv, info = trtri(Rc, lower=0)
            if info != 0:  # pragma: no cover - Rc passed the diagonal check above
                raise la.LinAlgError(f"trtri failed with info={info}")
            last = sweeps >= 2 and ratio > 0.5 and not (has_q and ratio < 1e-4)
            if big or min(W.strides) < 0:
                W = _mm(W, Rinv)
            elif last and out is not None and out.shape == W.shape and out.dtype == W.dtype \
                    and out.flags.f_contiguous:
                Wt = torch.from_numpy(W)
                torch.mm(torch.from_numpy(Rinv.astype(W.dtype, copy=False)).mT, Wt.mT,
                         out=torch.from_numpy(out).mT)
                W = out
            else:
                Wt = torch.from_numpy(W)
                W = torch.mm(torch.from_numpy(Rinv.astype(W.dtype, copy=False)).mT,
                             Wt.mT).mT.numpy()
            R = Rc @ R
            if has_q and ratio < 1e-4:
                # dividing by the small singular values amplified the rounding-level
                # components W keeps along Q: project them out again
                W, D = _full_passes(W, Q)
                C += D @ R
                ratio = 0.0
        if sweeps >= 2 and ratio > 0.5:  # CholQR2: the last sweep left it orthonormal
            return W, C, R
        if sweeps >= 4:  # pragma: no cover - needs a block that stays ill-conditioned
            log.warning("block orthonormalization did not settle after %d sweeps", sweeps)
            return W, C, R


def _rank_revealing(W: np.ndarray, R: np.ndarray, Q: np.ndarray | None, C: np.ndarray | None,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                       np.ndarray | None]:
    """The rank-deficient case of :func:`_orthonormalize`: column-pivoted Householder QR.

    With ``W P = Q_r R_r`` the null directions come last; they are replaced by random ones
    and their rows of ``R_r`` (tiny by the pivoting) are dropped, so ``W = Q_r (R_r P^T)``
    still holds to that size. The columns are then projected out of ``Q`` again (the QR divided
    by small pivots, amplifying rounding along ``Q``; the random ones have every direction)
    and orthonormalized. Returns ``(W_new, R_new, C_new)`` keeping ``W_in = Q C + W R``.
    """
    Qr, Rr, piv = la.qr(W, mode="economic", pivoting=True)
    dr = np.abs(np.diag(Rr))
    weak = dr < 1e-10 * max(float(dr.max()) if dr.size else 0.0, 1e-300)
    Rr = Rr[:, np.argsort(piv)]
    if np.any(weak):
        fresh = rng.standard_normal((W.shape[0], int(weak.sum())))
        if np.iscomplexobj(W):
            fresh = fresh + 1j * rng.standard_normal(fresh.shape)
        Qr[:, weak] = fresh
        Rr[weak, :] = 0
    R = Rr @ R
    if Q is not None:
        Qr, D = _full_passes(np.asfortranarray(Qr), Q)
        C = C + D @ R
    Qn, Rn = la.qr(Qr, mode="economic")
    return np.asfortranarray(Qn), Rn @ R, C


def _full_passes(W: np.ndarray, Q: np.ndarray, before: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Classical Gram-Schmidt passes of ``W`` against ``Q``, repeated while they cancel (DGKS).

    ``before``: the norm the first pass is measured against (default ``||W||``; after a
    local pass that cancelled, the norm it left). Returns ``(W_orth, C)`` with
    ``W_in = Q C + W_orth``.
    """
    C = np.zeros((Q.shape[1], W.shape[1]), dtype=np.result_type(W, Q))
    if before is None:
        before = _frobenius(W)
    for _ in range(3):
        W, Cf = _project_out(W, Q)
        C += Cf
        after = _frobenius(W)
        if after >= 0.7071 * before:  # DGKS criterion: no cancellation, done
            break
        before = after
    return W, C


def count_below(L: Any, mass: np.ndarray, mu: float, *, perm: np.ndarray | None = None
                ) -> int | None:
    """Number of eigenvalues of ``(L, M)`` below ``mu`` (Sylvester's law of inertia).

    Counts the negative pivots of an ``LDL^H``-type factorization of ``L - mu M`` (SuperLU in
    symmetric mode without off-diagonal pivoting, so ``U = D L^H``). Returns ``None`` when the
    factorization had to pivot (the count would not be an inertia).

    Parameters
    ----------
    L : (V, V) sparse matrix
    mass : (V,) ndarray
    mu : float
    perm : (V,) int ndarray, optional
        A fill-reducing ordering of ``L``'s pattern to reuse (default: computed,
        :func:`fill_reducing_ordering`).
    """
    K = (L - mu * sp.diags(mass)).tocsc()
    perm = fill_reducing_ordering(K) if perm is None else check_permutation(perm, K.shape[0])
    try:
        lu = _symmetric_lu(K, perm)
    except RuntimeError:
        return None
    return _negative_pivots(lu)


def _negative_pivots(lu: Any, pivots: np.ndarray | None = None) -> int | None:
    """Inertia of a symmetric-mode SuperLU factorization (``None`` if it pivoted)."""
    if not np.array_equal(lu.perm_r, lu.perm_c):
        return None
    d = np.real(lu.U.diagonal() if pivots is None else pivots)
    if not np.all(np.isfinite(d)):
        return None
    return int(np.count_nonzero(d < 0))


def _check_count(L: Any, mass: np.ndarray, lam: np.ndarray, perm: np.ndarray | None = None
                 ) -> tuple[bool, str]:
    """Verify with an inertia count that no eigenvalue below the top cluster was skipped."""
    scale = max(float(np.max(np.abs(lam))), 1e-300)
    gaps = np.flatnonzero(np.diff(lam) > 1e-6 * scale)
    if gaps.size == 0:
        return True, "single cluster, nothing to count"
    j = int(gaps[-1])
    mu = 0.5 * (lam[j] + lam[j + 1])
    count = count_below(L, mass, mu, perm=perm)
    if count is None:
        return True, "inertia unavailable (pivoting factorization)"
    return count == j + 1, f"{count} eigenvalues below {mu:.6g}, {j + 1} found"


def _next_check(nq: int, worst: float, last: tuple[int, float], target: float, b: int,
                every: int) -> int:
    """Columns to add before the next convergence check of the Lanczos loop.

    Each check costs a dense eigendecomposition of the projected matrix (about a fifth of a
    block step at 100k unknowns and 288 columns), and the worst residual estimate falls
    geometrically once it falls (about a decade per block on meshes). From the last two
    checks, the step goes to 0.7 of the columns the trend needs to reach ``target``, between
    one block and ``4 every``; ``2 every`` while the estimate does not fall yet.
    """
    nq_prev, worst_prev = last
    if not (np.isfinite(worst_prev) and 0 < worst < worst_prev and nq > nq_prev):
        return 2 * every
    if worst <= target:
        return b
    rate = np.log(worst_prev / worst) / (nq - nq_prev)   # natural-log units per column
    need = 0.7 * np.log(worst / target) / rate
    steps = int(np.ceil(min(max(need, b), 4 * every) / b))
    return steps * b


def _rayleigh_quotients(L: sp.csr_matrix, mass: np.ndarray, Phi: np.ndarray) -> np.ndarray:
    """Rayleigh quotients ``phi^H L phi / phi^H M phi`` (``= x^H B x / x^H x``) per column.

    What the eigensolver returns for its converged Ritz vectors, in place of a Rayleigh-Ritz
    step with ``B`` on them (``H = X^H B X`` and a rotation by its eigenvectors): the
    off-diagonal entries of ``H`` in a column are the components of that pair's residual along
    the other pairs (``x_j^H B x_i = x_j^H r_i``), so the rotation moves a pair's residual by
    at most the residual itself, and the residuals are measured explicitly afterwards; the
    pairs that miss ``tol`` go through the sweeps, whose Rayleigh-Ritz step includes their
    coupling to all the others where it matters. Measured on the 100k-vertex torus at tol
    8.5e-12: the rotation moved no pair's residual by more than 1.7e-13 (relative), and the
    step cost 0.6 s for ``n = 1`` (the ``(V, k)`` products of ``H`` and of the rotation); the
    quotients take one fused pass (:func:`~manifoldmp.spectral.residual_norms.rayleigh_quotients`,
    26 ms there), or ``L Phi`` through scipy where the kernel does not run.

    Parameters
    ----------
    L : (V, V) csr_matrix
    mass : (V,) ndarray
    Phi : (V, k) ndarray
        Eigenvector estimates (``M^-1/2`` times the Ritz vectors of ``B``).

    Returns
    -------
    (k,) ndarray of float64
    """
    lam = residual_norms.rayleigh_quotients(L, mass, Phi)
    if lam is not None:
        return lam
    LPhi = np.asarray(L @ Phi)
    return (np.real(np.einsum("ij,ij->j", Phi.conj(), LPhi))
            / np.real(np.einsum("ij,ij,i->j", Phi.conj(), Phi, mass)))


def _sort_pairs(lam: np.ndarray, *columns: np.ndarray) -> None:
    """Put ``lam`` in ascending order, with the columns of each array, in place.

    The order changes inside degenerate clusters, where Rayleigh quotients differ by rounding
    (the 100k-vertex torus: 44 of 128 columns). C-ordered blocks are permuted row block by row
    block through a small buffer: 18 ms for ``(100k, 128)`` complex against 145 ms for numpy's
    ``A[:, moved] = A[:, src]`` (which also leaves ``X[:, order]`` copies Fortran-ordered,
    where the residual kernel reads rows). A few moved columns are copied as such (2 columns:
    6 against 53 ms).
    """
    order = np.argsort(lam, kind="stable")
    moved = np.flatnonzero(order != np.arange(len(order)))
    if moved.size == 0:
        return
    src = order[moved]
    lam[moved] = lam[src]
    for A in columns:
        if A.ndim == 2 and A.flags.c_contiguous and moved.size > 8:
            buf = np.empty((min(512, A.shape[0]), A.shape[1]), dtype=A.dtype)
            for a in range(0, A.shape[0], 512):
                blk = A[a:a + 512]
                np.take(blk, order, axis=1, out=buf[:len(blk)])
                blk[...] = buf[:len(blk)]
        else:
            A[..., moved] = A[..., src]


def _sweep_block(apply_S: Any, Bmat: sp.csr_matrix, X: np.ndarray, rng: np.random.Generator,
                 cols: np.ndarray, w: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse iteration on the columns ``cols`` of ``X``, orthogonal to the others.

    Returns ``(Z, H1, H22)``: ``Z = S X[:, cols]`` made orthonormal and orthogonal to the kept
    columns of ``X`` (classical Gram-Schmidt, repeated where it cancels; the coefficients of
    the swept columns are zero: their span is replaced),
    ``H1 = X^H B Z`` of shape ``(k, m)`` and ``H22 = Z^H B Z``.

    With ``w`` (``M^1/2``), ``X`` is given as the eigenvectors ``Phi`` and stands for
    ``w Phi`` (the products with it take ``w`` onto the thin blocks instead), so the solver
    needs no ``(V, k)`` copy of its Ritz vectors beside the eigenvectors.
    """
    def wt(Y: np.ndarray) -> np.ndarray:
        return Y if w is None else w[:, None] * Y

    Z = apply_S(np.asfortranarray(wt(X[:, cols])))
    Z /= np.linalg.norm(Z, axis=0)
    before = _frobenius(Z)
    for _ in range(2):  # CGS against the kept columns (coefficients of the swept ones zero),
        C = _mm(X, wt(Z), adjoint=True)   # again only where the first pass cancelled (DGKS):
        C[cols] = 0                       # the kept pairs' components are small at the
        Z -= wt(_mm(X, C))                # rounding level
        after = _frobenius(Z)
        if after >= 0.7071 * before:
            break
        before = after
    Z, _, _ = _orthonormalize(np.asfortranarray(Z), None, rng)
    BZ = Bmat @ Z
    return Z, _mm(X, wt(BZ), adjoint=True), Z.conj().T @ BZ


def _swept_only(Z: np.ndarray, H1: np.ndarray, H22: np.ndarray, cols: np.ndarray,
                allowance: float, floor: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Rayleigh-Ritz within the swept columns alone, where the rest does not change it.

    After the step within ``Z`` (``H22 = W diag(mu) W^H``), the new vector ``z_j = Z w_j``
    couples to the kept columns by ``||X_kept^H B z_j||``: the part of its residual that a
    step including the kept columns would remove (and their change, of the same size). When
    that is at most ``allowance * max(|mu_j|, floor)`` for every ``j``, the kept columns stay
    as they are and ``(mu, Z W)`` is returned; otherwise ``None`` (the caller runs the full
    step, :func:`_refine`). At the rounding level, where the sweeps run, the couplings are
    tiny (100k-vertex torus: 5e-14 relative against an allowance of 8.5e-13), and this saves
    the ``(V, k) x (k, k)`` rotation of all pairs and a new ``(V, k)`` block: 0.3-0.4 s per
    sweep at 100k vertices, 128 complex pairs.
    """
    rest = np.ones(H1.shape[0], dtype=bool)
    rest[cols] = False
    mu, W = la.eigh(0.5 * (H22 + H22.conj().T))
    coupling = np.linalg.norm(H1[rest] @ W, axis=0)
    if not np.all(coupling <= allowance * np.maximum(np.abs(mu), floor)):
        return None
    return mu, _mm(np.asfortranarray(Z), W)


def _refine(apply_S: Any, Bmat: sp.csr_matrix, X: np.ndarray, s: np.ndarray,
            rng: np.random.Generator, cols: np.ndarray | None = None,
            lam: np.ndarray | None = None, overwrite_x: bool = False,
            block: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One inverse-iteration sweep ``Y = S X`` of the Ritz vectors, then Rayleigh-Ritz with B.

    Parameters
    ----------
    X : (V, k) ndarray
        Ritz vectors of the symmetric form ``B`` (orthonormal).
    s : (V,) ndarray
        ``M^-1/2``; the returned eigenvectors are ``M``-orthonormal.
    cols : (m,) int ndarray, optional
        Sweep only these columns (the pairs above the tolerance); the others enter the
        Rayleigh-Ritz step as they are, so pairs already converged stay converged (the
        span still holds them) and the sweep costs ``m`` solves instead of ``k``.
    lam : (k,) ndarray
        With ``cols``: the Rayleigh quotients of ``X``. ``X^H B X`` is ``diag(lam)`` up to the
        residuals of the kept pairs (``x_j^H B x_i = x_j^H r_i``, below ``tol``), so only the
        products with the swept columns are formed: ``B`` on ``m`` columns instead of ``k``.
    overwrite_x : bool
        With ``cols``: rotate ``X`` in place (its memory becomes the third output), which
        saves a ``(V, k)`` temporary.
    block : tuple, optional
        With ``cols``: :func:`_sweep_block`'s output for them, where the caller has it.

    Returns
    -------
    eigenvalues : (k,) ndarray
    eigenvectors : (V, k) ndarray
        ``M``-orthonormal.
    ritz_vectors : (V, k) ndarray
        The same vectors for ``B`` (orthonormal): ``eigenvectors / s``, for the next sweep.
    """
    if cols is None:
        Y, _, _ = _orthonormalize(apply_S(X), None, rng)
        H = _mm(Y, Bmat @ Y, adjoint=True)
        lam, U = la.eigh(0.5 * (H + H.conj().T))
        Xn = _mm(Y, U)
        return lam, s[:, None] * Xn, Xn
    if lam is None:
        raise ParameterError("a partial sweep needs the Ritz values of X (lam)")
    k = X.shape[1]
    rest = np.ones(k, dtype=bool)
    rest[cols] = False
    Z, H1, H22 = block if block is not None else _sweep_block(apply_S, Bmat, X, rng, cols)
    r = int(rest.sum())
    H = np.zeros((k, k), dtype=np.result_type(X, Z))
    H[np.arange(r), np.arange(r)] = lam[rest]
    H[:r, r:] = H1[rest]
    H[r:, :r] = H1[rest].conj().T
    H[r:, r:] = H22
    lam_new, U = la.eigh(0.5 * (H + H.conj().T))
    Ufull = np.zeros((k, k), dtype=U.dtype)
    Ufull[rest] = U[:r]
    # X Ufull + Z U[r:], the second product added in place (fresh (V, k) temporaries cost
    # more than the products here)
    Xn = torch.from_numpy(_rotate(X, Ufull) if overwrite_x else _mm(X, Ufull))
    Xn.addmm_(torch.from_numpy(Z), torch.from_numpy(np.ascontiguousarray(U[r:])))
    return lam_new, (Xn * torch.from_numpy(s)[:, None]).numpy(), Xn.numpy()


@contextlib.contextmanager
def _scratch_released() -> Iterator[None]:
    """Free the Gram-Schmidt kernels' scratch block on the way out."""
    try:
        yield
    finally:
        gramschmidt.release_scratch()


def generalized_eigsh(L: Any, mass: Any, k: int, *, sigma: float | None = None,
                      tol: float = 1e-9, block_size: int | None = None,
                      max_basis: int | None = None, max_restarts: int = 50,
                      seed: int = 0, verify: bool = True,
                      progress: bool | None = None, perm: Any = None) -> EigenResult:
    """The ``k`` eigenpairs of ``L phi = lambda M phi`` nearest above ``sigma``, ascending.

    Parameters
    ----------
    L : (V, V) scipy sparse matrix
        Hermitian (real symmetric or complex Hermitian), e.g. a connection Laplacian.
    mass : (V,) array_like
        Positive diagonal of the lumped mass matrix ``M``.
    k : int
        Number of eigenpairs, ``1 <= k <= V``.
    sigma : float, optional
        Shift, below the wanted eigenvalues. Default: ``-0.01 * 4 pi / area`` (one percent of
        the first nonzero eigenvalue predicted by Weyl's law), and the ``k`` algebraically
        smallest pairs are returned also when ``L`` is indefinite (negative cotan weights):
        the inertia of ``L - sigma M`` counts the eigenvalues below the shift; fewer than ``k``
        are found as the negative Ritz values of the shift-inverted operator, beside the
        smallest ones above it; with ``k`` or more the shift is lowered tenfold at a time
        until none is left below it.
    tol : float
        Stopping rule: every returned pair satisfies
        ``||L phi - lambda M phi||_{M^-1} <= tol * max(|lambda|, floor)`` (:func:`residuals`).
    block_size : int, optional
        Vectors per Lanczos block (default ``min(8, k)``: on meshes fewer solves than 16, 592
        against 848 for 128 pairs of a torus, and less time; measured with the thinner restart
        of earlier versions, 512 now).
    max_basis : int, optional
        Basis size at which the method restarts (default ``max(2 k + 4 b, 8 b, 160)``, at most
        V). A restart keeps the ``k + max(b, 3 k / 8)`` leading Ritz vectors (fewer when the
        basis is too small for that).
    max_restarts : int
        Give up (with :class:`EigenSolverError`) after this many restarts.
    seed : int
        Seed of the random starting block; results are deterministic for a given seed.
    verify : bool
        Count the eigenvalues below the last gap with Sylvester's law of inertia (one extra
        factorization) and, if a block Krylov method skipped one (possible when a degenerate
        eigenspace is larger than the block), solve again with a doubled block; raise if that
        fails too. ARPACK has no such check.
    progress : bool, optional
        A tqdm bar of the pairs that meet ``tol`` (estimated at each convergence check), with
        the solves so far and the worst estimated residual. Default: for problems above 50,000
        unknowns, when stderr is a terminal.
    perm : (V,) array_like of int, optional
        A fill-reducing ordering of ``L``'s sparsity pattern to reuse, for problems that share
        it (the types ``n`` of one mesh): :func:`fill_reducing_ordering` of one of them. Default:
        computed here (METIS; 0.4 s at 100k unknowns).

    Returns
    -------
    EigenResult
        Eigenvalues ascending, eigenvectors ``M``-orthonormal, per-pair residuals.

    Raises
    ------
    ParameterError
        Bad ``k``, ``tol``, shapes or a non-positive mass.
    EigenSolverError
        No convergence within ``max_restarts`` (the message gives the worst residual reached).

    Notes
    -----
    If the explicit residual stagnates above ``tol`` at the rounding level of the problem
    (many near-zero eigenvalues, e.g. one per connected component of a scan), the pairs are
    returned with a logged warning; ``EigenResult.residuals`` holds what was reached.
    Problems with at most 2500 unknowns, or with ``k > V / 4``, are solved densely (LAPACK
    ``evr``). With an explicit ``sigma`` the pairs found are the ``k`` nearest above it.

    Examples
    --------
    >>> import manifoldmp as mmp
    >>> S = mmp.meshes.icosphere(4)
    >>> res = generalized_eigsh(mmp.connection_laplacian(S, 1), S.vertex_areas, 8)
    >>> [round(float(x), 1) for x in res.eigenvalues]  # l(l+1) - 1 for l = 1 (x3), l = 2 (x5)
    [1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    """
    t0 = time.perf_counter()
    if not sp.issparse(L):
        raise ParameterError(f"L must be a scipy.sparse matrix, got {type(L).__name__}")
    V = L.shape[0]
    if L.shape != (V, V):
        raise ParameterError(f"L must be square, got shape {L.shape}")
    mass = np.asarray(mass, dtype=np.float64).reshape(-1)
    if mass.shape != (V,):
        raise ParameterError(f"mass must have shape ({V},), got {mass.shape}")
    if not np.all(np.isfinite(mass)) or np.min(mass) <= 0:
        raise ParameterError(f"mass must be finite and positive, min is {np.min(mass)}")
    k = validate_int(k, "k", minimum=1)
    if k > V:
        raise ParameterError(f"k must be at most the number of vertices {V}, got {k}")
    tol = validate_positive(tol, "tol")
    if progress is not None and not isinstance(progress, bool):
        raise ParameterError(f"progress must be a bool or None, got {progress!r}")
    if perm is not None:
        perm = check_permutation(perm, V)
    is_complex = np.iscomplexobj(L.data) if hasattr(L, "data") else np.iscomplexobj(L)
    dtype = np.complex128 if is_complex else np.float64
    L = sp.csr_matrix(L, dtype=dtype)

    if V <= DENSE_LIMIT or 4 * k > V:
        lam, Phi = _dense(L, mass, k)
        res = residuals(L, mass, lam, Phi)
        return EigenResult(lam, Phi, res, float("nan"), 0, time.perf_counter() - t0)

    b = validate_int(block_size, "block_size", minimum=1) if block_size is not None \
        else min(8, k)
    if perm is None:   # one ordering for every factorization of this pattern
        perm = fill_reducing_ordering(L)
    disable = (None if V > 50_000 else True) if progress is None else not progress
    # One OpenBLAS thread: the heavy products of the loop are torch's (the block solves,
    # OpenMP). OpenBLAS' idle threads spin after each call and starve them: on 2 cores, 100k
    # vertices, 128 pairs, 18-20 s with OpenBLAS threads, 12.6 s without.
    with threadpool_limits(1, user_api="blas"), _scratch_released(), \
            tqdm(total=k, desc="eigenpairs", unit="pair", disable=disable, leave=False) as bar:
        for attempt in range(3):
            res = _block_lanczos(L, mass, k, sigma, tol, b, max_basis, max_restarts,
                                 seed + attempt, is_complex, dtype, t0, perm, bar)
            if verify:
                bar.set_postfix_str("inertia check")
                ok, what = _check_count(L, mass, res.eigenvalues, perm)
            if not verify or ok:
                if verify:
                    log.debug("inertia check passed: %s", what)
                bar.update(bar.total - bar.n)
                return res
            log.warning("eigensolver skipped eigenvalues (%s); solving again with block size %d",
                        what, 2 * b)
            b = min(2 * b, k)
            if max_basis is not None:
                max_basis = max(max_basis, k + 4 * b)
            bar.reset()
    raise EigenSolverError(f"eigenvalues were skipped in three attempts ({what})")


def _block_lanczos(L: sp.csr_matrix, mass: np.ndarray, k: int, sigma: float | None, tol: float,
                   b: int, max_basis: int | None, max_restarts: int, seed: int,
                   is_complex: bool, dtype: Any, t0: float,
                   perm: np.ndarray | None = None, bar: Any = None) -> EigenResult:
    V = L.shape[0]
    area = float(mass.sum())
    sigma_auto = sigma is None
    if sigma is None:
        sigma = -0.01 * 4.0 * np.pi / area
    sigma = float(sigma)
    nmax = validate_int(max_basis, "max_basis", minimum=1) if max_basis is not None \
        else max(2 * k + 4 * b, 8 * b, 160)
    nmax = min(nmax, V)
    # thick restart keeps k + max(b, 3k/8) Ritz vectors: the unwanted ones just above the k-th
    # carry the convergence of the last wanted pairs (100k torus, k = 128: 512 solves against
    # 592 keeping k + b, residual 2.9e-11 against 3.7e-11, 10 % less time)
    keep = min(k + max(b, (3 * k) // 8), nmax - 2 * b)
    if keep < k:
        raise ParameterError(
            f"max_basis={nmax} is too small for k={k} with block_size={b}; "
            f"need at least {k + 2 * b}")

    s = 1.0 / np.sqrt(mass)
    sqrt_m = np.sqrt(mass)
    Bmat = sp.diags(s) @ L @ sp.diags(s)
    Bmat = sp.csr_matrix(Bmat)
    eye = sp.identity(V, dtype=dtype, format="csr")
    lu = _factorize((Bmat - sigma * eye).tocsc(), perm)
    n_neg = 0  # eigenvalues below sigma that are wanted (all of them; see below)
    if sigma_auto:
        # Sylvester: negative pivots = eigenvalues below sigma (negative cotan weights make L
        # indefinite); the k algebraically smallest are wanted.
        below = lu.negative_pivots()
        if below and below < k:
            # Keep the shift: the eigenvalues below it are the whole negative side of
            # S = (B - sigma)^-1, where the Lanczos method finds them as extreme Ritz values
            # beside the largest positive ones. Moving the shift below them instead squeezes
            # the wanted part of the spectrum of S (a raw range scan, n = 1, 29 negative
            # eigenvalues down to -5 against lambda_128 ~ 0.1: 4840 solves, 130 s).
            n_neg = int(below)
            log.warning("L is indefinite: %d eigenvalue(s) below the shift %.3e (negative cotan "
                        "weights?); they are returned with the smallest ones above it", below,
                        sigma)
        elif below:
            # as many as k below: lower the shift until none is left
            log.warning("L is indefinite: %d eigenvalue(s) below the shift %.3e (negative cotan "
                        "weights?); moving the shift below the spectrum", below, sigma)
            hi = sigma  # has eigenvalues below it
            for _ in range(60):
                sigma *= 10.0
                lu = _factorize((Bmat - sigma * eye).tocsc(), lu.perm)
                if not lu.negative_pivots():
                    break
                hi = sigma
            lo = sigma  # no eigenvalue below; bisect towards the smallest one
            for _ in range(6):
                mid = 0.5 * (lo + hi)
                lu_mid = _factorize((Bmat - mid * eye).tocsc(), lu.perm)
                if lu_mid.negative_pivots():
                    hi = mid
                else:
                    lo, lu = mid, lu_mid
            sigma = lo
            log.info("shift moved to %.3e, below the smallest eigenvalue", sigma)
    lu.prepare_block_solves()
    n_solves = 0

    def apply_S(X: np.ndarray) -> np.ndarray:
        nonlocal n_solves
        n_solves += X.shape[1]
        return np.asarray(lu.solve(X), dtype=dtype)

    rng = np.random.default_rng(seed)
    Q = _empty_basis(V, nmax + b, dtype)
    T = np.zeros((nmax + b, nmax + b), dtype=dtype)
    X0 = rng.standard_normal((V, b))
    if is_complex:
        X0 = X0 + 1j * rng.standard_normal((V, b))
    W, _, _ = _orthonormalize(X0.astype(dtype), None, rng)
    Q[:, :b] = W
    nq = b          # columns of Q in use (the last block has not had S applied yet)
    start = 0       # first column of the block to expand
    lo = 0          # first column of the previous block: S Q[:, start:nq] lies in Q[:, lo:]
    restarts = 0
    worst = np.inf
    target = tol
    best, stalls, stalls_est = np.inf, 0, 0
    kept: tuple[Any, Any, Any, float] = (None, None, None, np.inf)  # best pairs so far
    check_every = max(b, k // 8)
    next_check = k + 2 * b
    last_check = (0, np.inf)  # (columns, worst estimate) at the previous check
    while True:
        W = apply_S(Q[:, start:nq])
        slot = Q[:, nq:nq + W.shape[1]]
        Wo, C, R = _orthonormalize(W, Q[:, :nq], rng, local=lo, out=slot)
        T[:nq, start:nq] = C
        T[start:nq, :nq] = C.conj().T
        nb = Wo.shape[1]
        if Wo is not slot:   # else the last Cholesky-QR product wrote it there
            Q[:, nq:nq + nb] = Wo
        Rlast = R  # S Q = Q T + Q_next Rlast E^H
        restart = nq + nb > nmax
        if not (restart or nq >= next_check):
            lo, start, nq = start, nq, nq + nb
            continue
        next_check = nq + check_every
        # Ritz pairs of S on span(Q[:, :nq]), wanted ones first (lambda = sigma + 1 / theta
        # ascending: the negative theta, if any are wanted, then the largest positive ones)
        Tm = 0.5 * (T[:nq, :nq] + T[:nq, :nq].conj().T)
        nw = min(nq, keep)
        theta, Y, got_neg = _ritz(Tm, nw, n_neg)
        with np.errstate(divide="ignore"):
            lam = sigma + 1.0 / theta
        Yw = Y
        if nw >= k and got_neg == n_neg and np.all(theta[:k] != 0):
            G = Bmat @ Wo - sigma * Wo                      # (V, b): (B - sigma) Q_next
            Z = (Rlast @ Yw[start:nq, :k]) / theta[None, :k]  # (b, k)
            GG = G.conj().T @ G
            est = np.sqrt(np.maximum(np.real(np.sum(Z.conj() * (GG @ Z), axis=0)), 0.0))
            rel = est / np.maximum(np.abs(lam[:k]), _floor(lam[:k], mass))
            worst = float(np.max(rel))
            log.debug("check at %d columns, %d solves: %d of %d pairs below %.1e, worst %.1e",
                      nq, n_solves, int(np.count_nonzero(rel <= target)), k, target, worst)
            next_check = nq + _next_check(nq, worst, last_check, target, b, check_every)
            last_check = (nq, worst)
            if bar is not None:
                bar.update(max(int(np.count_nonzero(rel <= target)) - bar.n, 0))
                bar.set_postfix(solves=n_solves, residual=f"{worst:.1e}")
            if worst <= target or (worst <= tol and stalls_est >= 2):
                # the Ritz vectors of S scaled in place to eigenvectors (Phi = M^-1/2 X:
                # no second (V, k) block), with their Rayleigh quotients; the pairs above
                # tol go through the sweeps below
                Phi = _mm(Q[:, :nq], np.ascontiguousarray(Yw[:, :k]))   # C-ordered
                torch.from_numpy(Phi).mul_(torch.from_numpy(s)[:, None])
                lam = _rayleigh_quotients(L, mass, Phi)
                res = residuals(L, mass, lam, Phi)
                _sort_pairs(lam, res, Phi)
                achieved = float(np.max(res))
                gain = np.inf
                sweeps = 0
                while achieved > tol and sweeps < 3 and gain >= 2.0:
                    # The Ritz vectors carry rounding noise from the solves in the stiff
                    # directions, which B amplifies: a step of inverse iteration removes it
                    # (the residual falls to ARPACK's level, 25k-vertex torus: 2.3e-11 ->
                    # 3e-12) where more Lanczos steps would not. Only the pairs above tol
                    # are swept: 100k torus at eigsh's residual, 7 solves instead of 256.
                    sweeps += 1
                    cols = np.flatnonzero(res > tol)
                    block = _sweep_block(apply_S, Bmat, Phi, rng, cols, w=sqrt_m)
                    floor = _floor(lam, mass)
                    alone = _swept_only(*block, cols, 0.1 * tol, floor)
                    if alone is not None:   # the kept pairs do not change
                        mu, Zn = alone
                        Phi_c = _scaled(Zn, s)
                        res_c = residuals(L, mass, mu, Phi_c, floor=floor)
                        after = max(float(np.max(res_c)),
                                    float(np.max(np.delete(res, cols), initial=0.0)))
                        gain = achieved / max(after, 1e-300)
                        log.debug("refinement sweep of %d pairs: residual %.1e -> %.1e",
                                  len(cols), achieved, after)
                        if gain > 1.0:
                            Phi[:, cols] = Phi_c
                            lam[cols], res[cols] = mu, res_c
                            _sort_pairs(lam, res, Phi)
                            achieved = after
                        continue
                    # the full step (on the unscaled vectors, rotated in place)
                    lam_r, Phi_r, _ = _refine(apply_S, Bmat, _scaled(Phi, sqrt_m), s, rng,
                                              cols, lam, overwrite_x=True, block=block)
                    res_r = residuals(L, mass, lam_r, Phi_r)
                    gain = achieved / max(float(np.max(res_r)), 1e-300)
                    log.debug("refinement sweep with all pairs: residual %.1e -> %.1e",
                              achieved, float(np.max(res_r)))
                    if gain > 1.0:
                        lam, Phi, res, achieved = lam_r, Phi_r, res_r, float(np.max(res_r))
                if achieved < kept[3]:
                    kept = (lam, Phi, res, achieved)
                if achieved <= tol:
                    break
                stalls = stalls + 1 if achieved >= 0.5 * best else 0
                if stalls >= 2 or (sweeps and gain < 2.0):
                    # inverse iteration no longer gains: what is left is rounding
                    lam, Phi, res, achieved = kept
                    log.warning("eigensolver: residual stagnates at %.1e above tol %.1e "
                                "(rounding level of this problem)", achieved, tol)
                    break
                best = min(best, achieved)
                # the estimate assumes exact orthogonality; tighten it and go on
                target = min(target, 0.5 * tol * target / achieved)
                stalls_est = 0
            elif worst <= tol:
                stalls_est += 1  # the estimate cannot reach the tightened target
        if restart:
            restarts += 1
            if restarts > max_restarts:
                raise EigenSolverError(
                    f"block Lanczos did not converge after {max_restarts} restarts "
                    f"({n_solves} solves): worst relative residual {worst:.2e} > tol {tol:.1e}")
            log.debug("restart %d: worst residual %.2e, %d solves", restarts, worst, n_solves)
            Yk = Yw[:, :keep]
            coupling = Rlast @ Yk[start:nq, :]            # (b, keep)
            _rotate(Q[:, :nq], Yk)                        # Q[:, :keep] = Q Yk
            Q[:, keep:keep + nb] = Wo
            T[:] = 0
            T[np.arange(keep), np.arange(keep)] = theta[:keep]
            T[keep:keep + nb, :keep] = coupling
            T[:keep, keep:keep + nb] = coupling.conj().T
            lo, start, nq = 0, keep, keep + nb  # the new block couples to every kept vector
            next_check = nq + check_every  # check again before the next restart
            last_check = (0, np.inf)
        else:
            lo, start, nq = start, nq, nq + nb

    if n_neg == 0 and lam[0] < sigma:
        log.warning("eigenvalue %.3e below the shift %.3e: L is indefinite and more eigenvalues "
                    "may lie below sigma (non-Delaunay mesh?)", lam[0], sigma)
    seconds = time.perf_counter() - t0
    log.info("eigensolver: %d pairs of a %d-unknown %s problem in %.2f s, %d solves, "
             "%d restarts, max residual %.1e", k, V, "complex" if is_complex else "real",
             seconds, n_solves, restarts, float(np.max(res)))
    return EigenResult(lam, Phi, res, sigma, n_solves, seconds)
