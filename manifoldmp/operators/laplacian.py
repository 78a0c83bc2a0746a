"""Connection (bundle) Laplacians and the lumped mass matrix (THEORY.md 1.5, 2.3).

A domain (:class:`~manifoldmp.Surface` or :class:`~manifoldmp.PointCloud`) exposes its
discrete connection as per-pair data ``(tail, tip, w, rho)``: each pair ``i -> j`` contributes
the weight ``w`` to ``L[i, i]`` and ``L[j, j]`` and ``-w exp(-i n rho)`` to ``L[i, j]`` (and the
conjugate to ``L[j, i]``), where ``rho = rho_{i->j}`` is the transport angle from frame ``i``
to frame ``j``. Pairs may repeat (a mesh gives one per halfedge); entries are summed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from manifoldmp.errors import ParameterError
from manifoldmp.mesh.validate import validate_int

__all__ = ["bundle_laplacian", "connection_laplacian", "mass_matrix"]


def _check_domain(domain: Any) -> None:
    if not (hasattr(domain, "_connection_data") and hasattr(domain, "_mass")):
        raise ParameterError(
            f"domain must be a manifoldmp.Surface or manifoldmp.PointCloud, "
            f"got {type(domain).__name__}"
        )


def _assemble(n_vertices: int, tail: np.ndarray, tip: np.ndarray, off: np.ndarray,
              diag: np.ndarray, is_sorted: bool = False) -> sp.csr_matrix:
    """Hermitian CSR matrix with ``off`` at (tail, tip), its conjugate at (tip, tail), ``diag``.

    With ``is_sorted`` (``tail < tip``, pairs unique and lexicographically ordered) the strict
    upper triangle is already in CSR order and is used as is; the lower triangle is its
    conjugate transpose (an O(nnz) counting sort in scipy), so nothing is sorted.
    """
    if is_sorted:
        nv = n_vertices
        up_ptr = np.zeros(nv + 1, dtype=np.int64)
        np.cumsum(np.bincount(tail, minlength=nv), out=up_ptr[1:])
        upper = sp.csr_matrix((off, tip, up_ptr), shape=(nv, nv))
        lower = upper.T.tocsr()  # counting sort by column, O(nnz)
        lo_ptr = lower.indptr.astype(np.int64)
        n_lo, n_up = np.diff(lo_ptr), np.diff(up_ptr)
        indptr = np.zeros(nv + 1, dtype=np.int64)
        np.cumsum(n_lo + n_up + 1, out=indptr[1:])
        nnz = int(indptr[-1])
        indices = np.empty(nnz, dtype=np.int64)
        data = np.empty(nnz, dtype=off.dtype)
        row_lo = np.repeat(np.arange(nv), n_lo)
        pos = np.arange(lo_ptr[-1]) + (indptr[:-1] - lo_ptr[:-1])[row_lo]
        indices[pos] = lower.indices
        data[pos] = np.conj(lower.data) if np.iscomplexobj(off) else lower.data
        pos = indptr[:-1] + n_lo
        indices[pos] = np.arange(nv)
        data[pos] = diag
        pos = np.arange(up_ptr[-1]) + (indptr[:-1] + n_lo + 1 - up_ptr[:-1])[tail]
        indices[pos] = tip
        data[pos] = off
        if nnz < 2**31:
            indices, indptr = indices.astype(np.int32), indptr.astype(np.int32)
        out = sp.csr_matrix((data, indices, indptr), shape=(nv, nv))
        out.has_sorted_indices = True
        return out
    v = np.arange(n_vertices, dtype=np.int64)
    rows = np.concatenate([tail, tip, v])
    cols = np.concatenate([tip, tail, v])
    data = np.concatenate([off, np.conj(off) if np.iscomplexobj(off) else off,
                           diag.astype(off.dtype)])
    mat = sp.csr_matrix((data, (rows, cols)), shape=(n_vertices, n_vertices))
    mat.sum_duplicates()
    return mat


def connection_laplacian(domain: Any, n: int = 0) -> sp.csr_matrix:
    """Weak-form type-``n`` connection Laplacian ``L_n`` (THEORY.md 1.5).

    ``(L_n u)_i = sum_j w_ij (u_i - r_ji^n u_j)``: row ``i`` transports ``u_j`` into the frame
    of ``i`` (``L[i, j] = -w_ij exp(-1j n rho_{i->j})``). ``n = 0`` is the cotan Laplacian.

    Parameters
    ----------
    domain : Surface or PointCloud
    n : int
        SO(2) type (any integer).

    Returns
    -------
    (V, V) scipy.sparse.csr_matrix
        float64 for ``n = 0``, complex128 Hermitian otherwise; positive semidefinite where the
        weights are non-negative (Delaunay meshes, point clouds).

    Raises
    ------
    ParameterError
        ``n`` is not an integer or ``domain`` is not a manifoldmp domain.

    Examples
    --------
    >>> import manifoldmp as mmp
    >>> S = mmp.meshes.icosphere(2)
    >>> L1 = mmp.connection_laplacian(S, 1)
    >>> L1.dtype, bool(abs(L1 - L1.conj().T).max() < 1e-15)
    (dtype('complex128'), True)
    """
    _check_domain(domain)
    n = validate_int(n, "n")
    tail, tip, w, rho, is_sorted = domain._connection_data(angles=n != 0)
    nv = domain.n_vertices
    diag = np.bincount(tail, w, minlength=nv) + np.bincount(tip, w, minlength=nv)
    if n == 0:
        off = -w    # no transport: a point cloud needs no normals for its scalar Laplacian
    else:
        off = -w * np.exp(-1j * n * rho)
    return _assemble(nv, tail, tip, off, diag, is_sorted)


def mass_matrix(domain: Any) -> sp.csr_matrix:
    """Lumped mass matrix ``M = diag(m_i)`` (barycentric areas on meshes).

    Returns
    -------
    (V, V) scipy.sparse.csr_matrix
        Diagonal, float64.
    """
    _check_domain(domain)
    return sp.diags(np.asarray(domain._mass(), dtype=np.float64), format="csr")


def bundle_laplacian(domain: Any, n: int = 0, *, casimir: float = 0.0) -> sp.csr_matrix:
    """``L_n + kappa n^2 M``: type-``n`` sector of the principal-bundle Laplacian (THEORY.md 2.3).

    Parameters
    ----------
    domain : Surface or PointCloud
    n : int
    casimir : float
        Non-negative Casimir coefficient ``kappa``: 0 is reading A (plain connection Laplacian),
        ``1 / lambda_G`` reading B (``kappa = 1`` gives the Laplacian of the frame bundle with the
        unit fibre metric).

    Raises
    ------
    ParameterError
        ``casimir`` negative or not finite; ``n`` not an integer.
    """
    if isinstance(casimir, bool) or not isinstance(casimir, (int, float, np.integer, np.floating)):
        raise ParameterError(f"casimir must be a real number, got {casimir!r}")
    if not np.isfinite(casimir) or casimir < 0:
        raise ParameterError(f"casimir must be finite and >= 0, got {casimir}")
    n = validate_int(n, "n")
    L = connection_laplacian(domain, n)
    if casimir == 0 or n == 0:
        return L
    return (L + (float(casimir) * n * n) * mass_matrix(domain)).tocsr()
