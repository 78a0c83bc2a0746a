"""scipy.sparse -> torch.sparse conversions that keep the dtype (no hidden float32)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from manifoldmp.errors import ParameterError
from manifoldmp.mesh.validate import validate_choice

__all__ = ["all_finite", "column_real_dot", "complex_to_real_block", "to_torch_sparse"]


def column_real_dot(a: torch.Tensor, b: torch.Tensor, *,
                    workspace: torch.Tensor | None = None) -> torch.Tensor:
    """``Re sum_i conj(a_ic) b_ic`` per column: ``(C,)`` real.

    Used for heat-flow time gradients, Lanczos coefficients and column norms. On CPU the rows
    go through in chunks of about 2 MiB: a full-size temporary costs more in page faults than
    the arithmetic (100k x 64 complex: 7 ms chunked, 13 ms into a reused full workspace, 44 ms
    into a fresh one).

    Parameters
    ----------
    a, b : (V, C) Tensor
        Real or complex, same shape and dtype.
    workspace : (V, C) or (V, 2C) real Tensor, optional
        On CUDA, holds the elementwise product (``2C`` columns for complex input) instead of a
        fresh temporary; not used on CPU.

    Returns
    -------
    (C,) real Tensor
    """
    cplx = a.is_complex()
    if cplx:   # Re(conj(a) b) = Re a Re b + Im a Im b: a real product, no conjugate
        a = torch.view_as_real(a.resolve_conj()).reshape(a.shape[0], -1)
        b = torch.view_as_real(b.resolve_conj()).reshape(b.shape[0], -1)
    if a.device.type == "cpu":
        out = _chunked_dot(a, b)
    else:
        out = _mul(a, b, workspace).sum(dim=0)
    return out.view(-1, 2).sum(dim=1) if cplx else out


_CHUNK_ELEMENTS = 1 << 18


def _chunked_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_i a_ic b_ic`` for real ``(V, K)`` CPU tensors through a cache-sized buffer."""
    V, K = a.shape
    rows = max(1, _CHUNK_ELEMENTS // max(K, 1))
    if V <= rows:
        return (a * b).sum(dim=0)
    out = torch.zeros(K, dtype=a.dtype)
    buf = torch.empty(rows, K, dtype=a.dtype)
    for i in range(0, V, rows):
        ai = a[i:i + rows]
        bi = buf[:ai.shape[0]]
        torch.mul(ai, b[i:i + rows], out=bi)
        out += bi.sum(dim=0)
    return out


def all_finite(x: torch.Tensor) -> bool:
    """``True`` when no entry of ``x`` (real or complex) is NaN or infinite.

    One summation pass: a NaN or an infinity makes the sum non-finite. Only when the sum is
    not finite (which finite entries near the overflow threshold can also cause) are the
    entries checked one by one; ``isfinite(x).all()`` on every call costs 20 times more
    (a boolean temporary of ``x``'s size, 100k x 64 complex: 57 ms against 3 ms).
    """
    if x.numel() == 0 or not (x.is_floating_point() or x.is_complex()):
        return True
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all())


def _mul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return a * b if out is None else torch.mul(a, b, out=out)


def complex_dtype(real: torch.dtype) -> torch.dtype:
    """The complex dtype with the precision of the real ``real`` (float32 -> complex64)."""
    return torch.complex64 if real == torch.float32 else torch.complex128


def complex_to_real_block(A: Any, *, layout: Literal["interleaved", "stacked"] = "interleaved"
                          ) -> sp.csr_matrix:
    """Real ``(2V, 2V)`` form of a complex ``(V, V)`` operator (THEORY.md 1.5).

    ``interleaved``: vertex ``i`` owns rows ``2i, 2i+1`` (``(Re, Im)`` pairs, the feature
    layout of the layers) and each entry ``a + ib`` becomes the block ``[[a, -b], [b, a]]``.
    ``stacked``: ``[[Re A, -Im A], [Im A, Re A]]`` acting on ``[Re u; Im u]``.
    Each eigenvalue of a Hermitian ``A`` appears twice in the real form.

    Parameters
    ----------
    A : (V, V) sparse matrix (complex or real)
    layout : {"interleaved", "stacked"}

    Returns
    -------
    (2V, 2V) scipy.sparse.csr_matrix of float64
    """
    layout = validate_choice(layout, "layout", ("interleaved", "stacked"))
    if not sp.issparse(A):
        raise ParameterError(f"A must be a scipy.sparse matrix, got {type(A).__name__}")
    A = sp.coo_matrix(A)
    if layout == "stacked":
        re, im = A.real, A.imag
        return sp.bmat([[re, -im], [im, re]], format="csr")
    r, c = A.row.astype(np.int64), A.col.astype(np.int64)
    a = np.real(A.data)
    b = np.imag(A.data) if np.iscomplexobj(A.data) else np.zeros_like(a)
    rows = np.concatenate([2 * r, 2 * r, 2 * r + 1, 2 * r + 1])
    cols = np.concatenate([2 * c, 2 * c + 1, 2 * c, 2 * c + 1])
    vals = np.concatenate([a, -b, b, a])
    n, m = A.shape
    return sp.csr_matrix((vals, (rows, cols)), shape=(2 * n, 2 * m))


def to_torch_sparse(A: Any, *, form: Literal["complex", "real_block"] = "complex",
                    layout: Literal["csr", "coo"] = "csr", device: Any = None) -> torch.Tensor:
    """Convert a scipy sparse matrix to a torch sparse tensor, keeping its dtype.

    Parameters
    ----------
    A : (V, V) scipy sparse matrix
    form : {"complex", "real_block"}
        ``complex`` keeps the values (complex128 stays complex128, float64 stays float64);
        ``real_block`` converts to the interleaved real ``(2V, 2V)`` form first.
    layout : {"csr", "coo"}
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor
        Sparse tensor of dtype ``torch.float64``/``torch.complex128`` (or whatever ``A`` held).
    """
    form = validate_choice(form, "form", ("complex", "real_block"))
    layout = validate_choice(layout, "layout", ("csr", "coo"))
    if not sp.issparse(A):
        raise ParameterError(f"A must be a scipy.sparse matrix, got {type(A).__name__}")
    if form == "real_block":
        A = complex_to_real_block(A)
    A = sp.csr_matrix(A)
    A.sum_duplicates()
    data = torch.from_numpy(np.ascontiguousarray(A.data))
    if layout == "csr":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            t = torch.sparse_csr_tensor(
                torch.from_numpy(A.indptr.astype(np.int64)),
                torch.from_numpy(A.indices.astype(np.int64)),
                data, size=A.shape, check_invariants=False,
            )
    else:
        coo = A.tocoo()
        idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        t = torch.sparse_coo_tensor(idx, torch.from_numpy(coo.data), size=A.shape,
                                    check_invariants=False).coalesce()
    return t.to(device) if device is not None else t
