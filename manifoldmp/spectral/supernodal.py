"""Multi right-hand-side solves with a sparse LU factor, one sparse product per tree level.

Why hand-written: SuperLU's solve (``scipy.sparse.linalg.splu(...).solve``) runs the
triangular substitutions one right-hand side at a time, in one thread, holding the GIL. The
block Lanczos eigensolver and the implicit heat steps solve blocks of 8 to 64 columns, so on
a 100k-vertex mesh SuperLU reads its 2 x 4.9M factor entries once per column (7-9 ms per
column real, 13 complex). No library on PyPI solves with a SuperLU factor otherwise
(MKL's sparse triangular solve through torch re-analyses the factor on every call, 19-88 ms
per column; CHOLMOD through cholespy is real-only).

The method (level-scheduled *partitioned inverse*, Alvarado and Schreiber 1993, on
supernodes as in Anderson and Saad 1989): consecutive columns of ``L`` whose structures
nest form a group (a supernode: a separator of the nested-dissection ordering is one). Groups
on the same level of the elimination tree do not depend on each other, so after reordering
the unknowns level by level each level of ``L x = b`` is

    x[a:e] = D_l^-1 (b[a:e] - B_l x[:a]),

with ``B_l`` the level's rows of ``L`` outside the groups and ``D_l^-1`` the block-diagonal
inverse of the groups' dense triangular diagonal blocks (computed once; a supernode's inverse
block has the same pattern as the block). Both are sparse products on all columns at once.
The upper factor runs the same levels in reverse. A 100k-vertex torus has 57k groups on 29
levels.

The products run in one numba kernel per level (:func:`_level_kernel`) whose row sums stay
in SIMD registers (:func:`~manifoldmp.spectral.fused._sum_tile_intrinsic`), complex ones on
the interleaved real view of the block, with the rows of a level split among the threads by
their work. 100k torus, 8 columns: 10 ms per solve real, 16-21 ms complex, against 12-13
and 41-68 ms through torch's CSR products (MKL; complex matrices stacked as real ones),
which remain the path where numba cannot run (a forked child, see
:func:`~manifoldmp.spectral.fused.fused_available`). SuperLU: 7 ms per column real, 13
complex.

The level order is checked against every entry of both factors, so a factor whose pattern
does not fit (partial pivoting, an unsymmetric pattern) is refused and the caller keeps
SuperLU's solve.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from manifoldmp.errors import ParameterError
from manifoldmp.spectral import fused

__all__ = ["LevelSolver"]

log = logging.getLogger(__name__)

#: Largest group: the dense inverse of a diagonal block costs its size cubed (flops) and
#: squared (entries), so longer chains are cut (more levels, same result).
MAX_GROUP = 1024

#: A factor is refused when its tree has more than ``max(MAX_LEVELS_MIN, V // LEVEL_WIDTH_MIN)``
#: levels: each level costs four sparse products of fixed overhead (tens of microseconds), so
#: levels must be wide. Nested dissection gives few (29 for a 100k-vertex torus).
MAX_LEVELS_MIN = 256
LEVEL_WIDTH_MIN = 100


def _torch_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
               shape: tuple[int, int]) -> torch.Tensor:
    """CSR tensor with int32 indices (MKL's 32-bit path; less index traffic)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(np.ascontiguousarray(indptr, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(data)), size=shape, check_invariants=False)


def _csr32(A: Any) -> sp.csr_matrix:
    """CSR copy with int32 indices, sorted (format conversions sort)."""
    A = sp.csr_matrix(A)
    A.indices = A.indices.astype(np.int32, copy=False)
    A.indptr = A.indptr.astype(np.int32 if A.nnz < 2**31 else np.int64, copy=False)
    if not A.has_sorted_indices:
        A.sort_indices()
    return A


def _groups(cnt: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Group id of each column: consecutive columns with nested structures (supernodes).

    Column ``j + 1`` joins ``j``'s group when it is ``j``'s first off-diagonal row and has
    one entry fewer (the structure of a column of a symmetric factor, minus its parent, lies
    in the parent's, so equal counts mean equal structures). Groups are cut at
    :data:`MAX_GROUP` columns.
    """
    V = len(cnt)
    join = np.zeros(V, dtype=bool)
    j = np.arange(V - 1)
    join[1:] = (parent[:-1] == j + 1) & (cnt[:-1] - 1 == cnt[1:])
    start = np.flatnonzero(~join)
    sizes = np.diff(np.append(start, V))
    if sizes.max() > MAX_GROUP:  # cut long chains: every MAX_GROUP-th column starts a group
        run = np.arange(V) - np.repeat(start, sizes)
        join &= run % MAX_GROUP != 0
    return np.cumsum(~join) - 1


def _parents(Lc: sp.csc_matrix) -> np.ndarray:
    """Smallest off-diagonal row of each column of a lower factor (-1 where none)."""
    V = Lc.shape[0]
    ix = Lc.indices.astype(np.int32)
    ix[ix == np.repeat(np.arange(V, dtype=np.int32), np.diff(Lc.indptr))] = V  # the diagonal
    parent = np.minimum.reduceat(ix, Lc.indptr[:-1]) if ix.size else np.full(V, V)
    return np.where(parent >= V, -1, parent)


def _levels(parent: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Level of each group in the group elimination tree (leaves 0): parents come later."""
    ng = int(group[-1]) + 1
    last = np.flatnonzero(np.append(group[1:] != group[:-1], True))  # last column of a group
    parent = parent[last]
    nxt = np.where(parent >= 0, group[np.maximum(parent, 0)], -1)
    lev = [0] * ng
    for g, p in enumerate(nxt.tolist()):  # groups are numbered children first
        if p >= 0 and lev[p] <= lev[g]:
            lev[p] = lev[g] + 1
    return np.asarray(lev, dtype=np.int64)


def _block_inverse(row: np.ndarray, col: np.ndarray, val: np.ndarray, first: np.ndarray,
                   size: np.ndarray, gid: np.ndarray, upper: bool) -> tuple[np.ndarray, ...]:
    """Entries ``(row, col, val)`` of the inverse of a block-diagonal triangular matrix.

    ``row, col`` are positions (new numbering) of the diagonal-block entries, ``gid`` their
    group, ``first`` and ``size`` each group's first position and size.
    """
    order = np.argsort(size, kind="stable")  # groups of one size together
    rows, cols, vals = [], [], []
    bounds = np.flatnonzero(np.diff(size[order])) + 1
    entry_order = np.argsort(size[gid], kind="stable")
    row, col, val, gid = row[entry_order], col[entry_order], val[entry_order], gid[entry_order]
    entry_bounds = np.searchsorted(size[gid], size[order][np.append(0, bounds)])
    entry_bounds = np.append(entry_bounds, len(gid))
    for i, groups in enumerate(np.split(order, bounds)):
        s = int(size[groups[0]])
        e0, e1 = entry_bounds[i], entry_bounds[i + 1]
        g = gid[e0:e1]
        slot = np.empty(len(size), dtype=np.int64)
        slot[groups] = np.arange(len(groups))
        lr, lc = row[e0:e1] - first[g], col[e0:e1] - first[g]
        if s == 1:
            inv = np.zeros((len(groups), 1, 1), dtype=val.dtype)
            inv[slot[g], 0, 0] = 1.0 / val[e0:e1]
        else:
            blocks = np.zeros((len(groups), s, s), dtype=val.dtype)
            blocks[slot[g], lr, lc] = val[e0:e1]
            eye = torch.eye(s, dtype=torch.from_numpy(blocks[:1]).dtype).expand(len(groups), s, s)
            inv = torch.linalg.solve_triangular(torch.from_numpy(blocks), eye,
                                                upper=upper).numpy()
        r, c = np.triu_indices(s) if upper else np.tril_indices(s)
        base = first[groups][:, None]
        rows.append((base + r[None, :]).ravel())
        cols.append((base + c[None, :]).ravel())
        vals.append(inv[:, r, c].ravel())
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _stacked(M: sp.csr_matrix, complex_: bool) -> torch.Tensor:
    """Torch CSR of ``M``; complex ``M`` as the real ``[Re M; Im M]`` (``LevelSolver._mm``).

    The stacked rows are assembled from ``M``'s own arrays (both halves share its pattern,
    explicit zeros included): scipy's ``vstack`` of ``M.real`` and ``M.imag`` took 0.19 of
    the 0.64 s level set-up of a 100k-vertex complex factor.
    """
    if not complex_:
        return _torch_csr(M.indptr, M.indices, np.ascontiguousarray(M.data.real), M.shape)
    indptr = np.asarray(M.indptr, dtype=np.int64)
    return _torch_csr(np.concatenate([indptr, indptr[-1] + indptr[1:]]),
                      np.concatenate([M.indices, M.indices]),
                      np.concatenate([M.data.real, M.data.imag]),
                      (2 * M.shape[0], M.shape[1]))


class _LevelMatrix:
    """One level's sparse matrix: CSR arrays for the row-sum kernels, a torch CSR on demand.

    ``re`` and ``im`` are the real and imaginary parts of the entries (``im`` empty for a
    real matrix); ``torch()`` is the stacked real form of :func:`_stacked` for the torch path
    (built on first use: no copy is held otherwise).
    """

    __slots__ = ("_torch", "im", "indices", "indptr", "is_complex", "re", "shape")

    def __init__(self, M: sp.csr_matrix, complex_: bool) -> None:
        self.indptr = np.ascontiguousarray(M.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(M.indices, dtype=np.int32)
        self.re = np.ascontiguousarray(M.data.real)
        self.im = np.ascontiguousarray(M.data.imag) if complex_ else self.re[:0]
        self.is_complex = complex_
        self.shape = M.shape
        self._torch: torch.Tensor | None = None

    def torch(self) -> torch.Tensor:
        if self._torch is None:
            data = self.re + 1j * self.im if self.is_complex else self.re
            self._torch = _stacked(sp.csr_matrix((data, self.indices, self.indptr),
                                                 shape=self.shape), self.is_complex)
        return self._torch

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.indptr, self.indices, self.re, self.im


def _balanced(indptr: np.ndarray, parts: int) -> np.ndarray:
    """Row bounds splitting a CSR matrix into ``parts`` ranges of about equal work.

    Work of a row: its entries plus one. The rows of a level vary (a separator's rows reach
    far more columns than a leaf's), so equal row counts would leave one thread waiting.
    """
    m = len(indptr) - 1
    work = (indptr - indptr[0]) + np.arange(m + 1)
    cuts = np.searchsorted(work, np.linspace(0, work[-1], parts + 1)[1:-1])
    return np.concatenate([[0], cuts, [m]]).astype(np.int64)


if fused.numba is not None:
    from numba import prange

    @fused._jit(parallel=True)
    def _level_kernel(Y, a, e, off, Bip, Bix, Bre, Bim, Dip, Dix, Dre, Dim, bb, bd, tmp,
                      cplx):  # pragma: no cover - jit
        """Rows ``a:e`` of ``Y``: ``t = Y[a:e] - B Y[off:]``, then ``Y[a:e] = D t``.

        ``B`` or ``D`` with an empty ``indptr`` is absent (no known part, resp. the
        identity). Complex matrices act on interleaved rows (the real view of a complex
        block). ``bb`` and ``bd`` split the rows among the threads for the two products.
        """
        W = Y.shape[1]
        has_b = Bip.shape[0] > 0
        has_d = Dip.shape[0] > 0
        for t in prange(bb.shape[0] - 1):
            row = np.empty(W, dtype=Y.dtype)
            for r in range(bb[t], bb[t + 1]):
                i = a + r
                if has_b:
                    fused._row_sum(Y, row, Bix, Bre, Bim, off, Bip[r], Bip[r + 1], cplx)
                    if has_d:
                        for q in range(W):
                            tmp[r, q] = Y[i, q] - row[q]
                    else:
                        for q in range(W):
                            Y[i, q] -= row[q]
                elif has_d:
                    for q in range(W):
                        tmp[r, q] = Y[i, q]
        if has_d:
            for t in prange(bd.shape[0] - 1):
                row = np.empty(W, dtype=Y.dtype)
                for r in range(bd[t], bd[t + 1]):
                    fused._row_sum(tmp, row, Dix, Dre, Dim, 0, Dip[r], Dip[r + 1], cplx)
                    for q in range(W):
                        Y[a + r, q] = row[q]

    @fused._jit(parallel=True)
    def _gather_rows(b, idx, out):  # pragma: no cover - jit
        """``out[i] = b[idx[i]]``, rows in parallel; ``b`` and ``out`` in any memory order.

        100k rows, 8 complex columns, Fortran-ordered ``b``: numpy's ``take`` 1.9-3.4 ms, this
        0.7 ms; into a Fortran-ordered ``out`` it replaces torch's gather and a copy.
        """
        n = out.shape[0]
        C = out.shape[1]
        for i in prange(n):
            k = idx[i]
            for c in range(C):
                out[i, c] = b[k, c]


class LevelSolver:
    """``A^-1 B`` for a Hermitian ``A = L D L^H`` (SuperLU, symmetric mode), all columns at once.

    Build with :meth:`from_superlu`; ``solve`` takes and returns arrays in the factor's own
    numbering. SuperLU's ``U`` of a Hermitian matrix factored without pivoting is ``D L^H``
    (to rounding), so only ``L`` and the pivots ``D`` are used: the upper solve runs the
    conjugate transposes of the lower one's matrices, levels in reverse.

    Complex factors run on the real view of the complex block (Re and Im interleaved, ``(V,
    2C)``): in the level kernels as complex sums, and in the torch path with matrices stacked
    as ``[Re M; Im M]`` (torch's complex sparse product on CPU does not go through MKL and is
    3-4 times slower than the real one of twice the size).

    Parameters
    ----------
    order : (V,) int ndarray
        Position ``i`` of the level order holds factor unknown ``order[i]``.
    lower, upper : list of tuple
        Per level ``(a, e, B, Dinv)``: rows ``a:e`` of the reordered system, ``B`` their
        entries outside the groups (CSR on the columns before ``a``, resp. after ``e``) or
        ``None``, ``Dinv`` the inverse of their diagonal blocks or ``None`` for the identity.
    pivots : (V,) ndarray
        ``D`` in the level order.
    """

    def __init__(self, order: np.ndarray, lower: list[tuple[int, int, Any, Any]],
                 upper: list[tuple[int, int, Any, Any]], pivots: np.ndarray) -> None:
        self.order = order
        self.lower = lower
        self.upper = upper
        self.dtype = pivots.dtype
        self.is_complex = np.iscomplexobj(pivots)
        self.inv_pivots = torch.from_numpy(1.0 / pivots)
        # (perm, rows in the level order, the same as a torch index, its inverse as one)
        self._composed: tuple[Any, np.ndarray, torch.Tensor, torch.Tensor] | None = None
        self._work: np.ndarray | None = None  # (V, C) workspace of the last width
        self._tmp: np.ndarray | None = None   # (rows of the widest level, C) of the kernels
        self._plans: tuple[int, list[tuple], list[tuple]] | None = None
        self.shape = (len(order), len(order))

    @classmethod
    def from_superlu(cls, lu: Any, pivots: np.ndarray | None = None) -> LevelSolver | None:
        """Level solver for a SuperLU factor, or ``None`` where it does not fit.

        A factor fits when it did not pivot (``perm_r`` and ``perm_c`` the identity, as
        :func:`~manifoldmp.spectral.eigen._factorize` leaves a symmetric-mode factor) and every
        entry of ``L`` respects the level order; the result is then compared with SuperLU's
        own solve on a random vector.

        Parameters
        ----------
        lu : scipy.sparse.linalg.SuperLU
        pivots : (V,) ndarray, optional
            ``lu.U.diagonal()`` where the caller has it already (default: computed).

        Raises
        ------
        ParameterError
            ``lu`` is not a SuperLU factor, or ``pivots`` has the wrong shape.
        """
        if not isinstance(lu, sla.SuperLU):
            raise ParameterError(f"lu must be a scipy.sparse.linalg.SuperLU factor, got "
                                 f"{type(lu).__name__}")
        V = lu.shape[0]
        if pivots is not None and np.shape(pivots) != (V,):
            raise ParameterError(f"pivots must have shape ({V},), got {np.shape(pivots)}")
        if V < 2 or not (np.array_equal(lu.perm_r, np.arange(V))
                         and np.array_equal(lu.perm_c, np.arange(V))):
            return None
        pivots = np.asarray(lu.U.diagonal() if pivots is None else pivots)
        if not np.all(np.isfinite(pivots)) or np.any(pivots == 0):
            return None
        Lc = sp.csc_matrix(lu.L)  # indices unsorted within columns
        if Lc.nnz == 0 or not np.all(Lc.diagonal() == 1.0):
            return None  # not a unit lower factor
        Lr = _csr32(Lc)  # the conversion sorts
        parent = _parents(Lc)
        group = _groups(np.diff(Lc.indptr), parent).astype(np.int32)
        lev = _levels(parent, group)
        n_levels = int(lev.max()) + 1
        if n_levels > max(MAX_LEVELS_MIN, V // LEVEL_WIDTH_MIN):
            # a deep tree (no fill-reducing ordering: a chain has one column per level) would
            # cost a few sparse products per level; SuperLU's solve is faster there
            log.debug("elimination tree has %d levels for %d unknowns; SuperLU solves kept",
                      n_levels, V)
            return None
        col_lev = lev[group].astype(np.int16 if lev.max() < 2**15 else np.int64)
        order = np.argsort(col_lev, kind="stable").astype(np.int32)
        pos = np.empty(V, dtype=np.int32)
        pos[order] = np.arange(V, dtype=np.int32)
        lev_new = col_lev[order]
        bounds = np.searchsorted(lev_new, np.arange(int(lev.max()) + 2))
        gnew = group[order]  # group ids stay contiguous in the level order
        starts = np.flatnonzero(np.append(True, gnew[1:] != gnew[:-1]))
        first_of = np.empty(int(group[-1]) + 1, dtype=np.int64)
        first_of[gnew[starts]] = starts
        size = np.bincount(gnew)
        # Index arrays stay int32 and levels int16: temporaries above 32 MiB are fresh pages
        # every time (page faults cost more than the arithmetic here).
        Tn = Lr[order]  # rows in the level order, columns still in the factor's
        counts = np.diff(Tn.indptr)
        same = np.repeat(gnew, counts) == group[Tn.indices]
        # pull form: row r reads columns of lower levels only (or its own group)
        fits = np.all((np.repeat(lev_new, counts) > col_lev[Tn.indices]) | same)
        r = np.repeat(np.arange(V, dtype=np.int32), counts)
        c = pos[Tn.indices]
        rs, cs = r[same], c[same]
        if not fits or np.any(rs < cs):
            log.debug("factor pattern does not fit the level order; SuperLU solves kept")
            return None
        Dr, Dc, Dv = _block_inverse(rs, cs, Tn.data[same], first_of, size, gnew[rs], False)
        cross = ~same
        per_row = counts - np.bincount(rs, minlength=V)
        B = sp.csr_matrix((Tn.data[cross], c[cross], np.append(0, np.cumsum(per_row))),
                          shape=(V, V))
        Dm = sp.coo_matrix((Dv, (Dr, Dc)), shape=(V, V)).tocsr()
        parts = []
        is_complex = np.iscomplexobj(Lr.data)
        BH, DH = (B.conj().T, Dm.conj().T) if is_complex else (B.T, Dm.T)
        for Bm, Dmat, upper in ((B, Dm, False), (_csr32(BH), _csr32(DH), True)):
            levels = []
            for lv in range(len(bounds) - 1):
                a, e = int(bounds[lv]), int(bounds[lv + 1])
                if a == e:
                    continue
                Bl = None
                ip = Bm.indptr[a:e + 1]
                if ip[-1] > ip[0]:
                    sl = slice(ip[0], ip[-1])
                    idx = Bm.indices[sl] - (e if upper else 0)
                    Bl = _LevelMatrix(sp.csr_matrix((Bm.data[sl], idx, ip - ip[0]),
                                                    shape=(e - a, V - e if upper else a)),
                                      is_complex)
                ipd = Dmat.indptr[a:e + 1]
                sl = slice(ipd[0], ipd[-1])
                dv = Dmat.data[sl]
                Dl = None
                if ipd[-1] - ipd[0] != e - a or not np.all(dv == 1.0):
                    Dl = _LevelMatrix(sp.csr_matrix((dv, Dmat.indices[sl] - a,
                                                     ipd - ipd[0]), shape=(e - a, e - a)),
                                      is_complex)
                levels.append((a, e, Bl, Dl))
            parts.append(levels)
        solver = cls(order, parts[0], parts[1], pivots[order].astype(Lr.dtype))
        probe = np.random.default_rng(0).standard_normal((V, 1)).astype(Lr.dtype)
        ref = np.asarray(lu.solve(probe))
        err = np.linalg.norm(solver.solve(probe) - ref) / max(np.linalg.norm(ref), 1e-300)
        if not err < 1e-6:
            log.warning("level-scheduled solve differs from SuperLU's by %.1e; not used", err)
            return None
        return solver

    def solve(self, b: np.ndarray, perm: np.ndarray | None = None) -> np.ndarray:
        """``A^-1 b`` for ``b : (V, C)``; returns ``(V, C)``.

        ``b`` and the result are in the factor's numbering, or, with ``perm``, in the numbering
        of the original matrix ``A_orig = A[perm][:, perm]`` (one row gather each way for
        both permutations). Not thread-safe: calls share a workspace.

        Raises
        ------
        ParameterError
            ``b`` is not ``(V, C)`` or ``perm`` not ``(V,)``.
        """
        b = np.asarray(b)
        if b.ndim != 2 or b.shape[0] != self.shape[0]:
            raise ParameterError(f"b must have shape ({self.shape[0]}, C), got {b.shape}")
        if perm is not None and np.shape(perm) != (self.shape[0],):
            raise ParameterError(f"perm must have shape ({self.shape[0]},), got "
                                 f"{np.shape(perm)}")
        idx, idx_t, inv_t = self._index(perm)
        if b.dtype != self.dtype:
            b = b.astype(self.dtype)
        # rows in the level order, gathered into a workspace kept between calls of one
        # width (fresh 100 MB blocks cost more in page faults than the gather itself).
        # Without numba: torch's row gather runs on both cores but reads a Fortran-ordered
        # block column by column per row (slower than numpy's take there): 100k rows, 8
        # complex columns, 1.1 ms C-ordered against numpy's 2.3, Fortran-ordered numpy's 3.4
        # against 11.9
        if self._work is None or self._work.shape != b.shape:
            self._work = np.empty(b.shape, dtype=self.dtype)
        kernels = fused.fused_available()
        if kernels:   # numba's gather reads either memory order by rows, in parallel
            _gather_rows(b, idx, self._work)
            bo = self._work
        elif b.flags.c_contiguous:
            torch.index_select(torch.from_numpy(b), 0, idx_t, out=torch.from_numpy(self._work))
            bo = self._work
        else:
            bo = np.take(b, idx, axis=0, out=self._work, mode="clip")
        yc = torch.from_numpy(bo)
        # complex: the same memory read as real (V, 2C) with Re and Im interleaved
        y = torch.view_as_real(yc).view(len(idx), -1) if self.is_complex else yc
        if kernels:
            self._sweeps_fused(yc, y)
            # back to the caller's numbering as a gather by the inverse permutation, in the
            # memory order of b (the eigensolver's blocks are Fortran-ordered: no copy after)
            out = np.empty(b.shape, dtype=self.dtype, order="F" if b.flags.f_contiguous
                           and not b.flags.c_contiguous else "C")
            _gather_rows(bo, inv_t.numpy(), out)
            return out
        for a, e, B, D in self.lower:
            self._level(yc, y, a, e, B, D, y[:a])
        yc.mul_(self.inv_pivots[:, None])
        for a, e, B, D in reversed(self.upper):
            self._level(yc, y, a, e, B, D, y[e:])
        # back to the caller's numbering as a gather by the inverse permutation, not a
        # scatter (100k rows, 8 columns: 1.5 against 5.2 ms complex, 0.34 against 4.6 real)
        return torch.index_select(yc, 0, inv_t).numpy()

    def _index(self, perm: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The gather indices of :meth:`solve`, cached for the last ``perm``.

        Rows of ``b`` in the level order (``order``, or ``perm[order]``) as numpy and torch
        indices, and the inverse permutation as a torch index.
        """
        if self._composed is None or self._composed[0] is not perm:
            idx = self.order if perm is None else np.asarray(perm)[self.order]
            inv = np.empty(len(idx), dtype=np.int64)
            inv[idx] = np.arange(len(idx))
            self._composed = (perm, idx, torch.from_numpy(idx.astype(np.int64)),
                              torch.from_numpy(inv))
        return self._composed[1], self._composed[2], self._composed[3]

    def _plan(self, threads: int) -> tuple[list[tuple], list[tuple]]:
        """Per level the arrays of :func:`_level_kernel` with row bounds for ``threads``."""
        if self._plans is None or self._plans[0] != threads:
            real = np.zeros(0, dtype=np.finfo(self.dtype).dtype)
            none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), real, real)
            sweeps = []
            for levels, upper in ((self.lower, False), (self.upper, True)):
                plan = []
                for a, e, B, D in levels:
                    ba = B.arrays() if B is not None else none
                    da = D.arrays() if D is not None else none
                    bb = _balanced(ba[0] if B is not None else np.zeros(e - a + 1, np.int64),
                                   threads)
                    bd = _balanced(da[0], threads) if D is not None else bb
                    plan.append((a, e, e if upper else 0, *ba, *da, bb, bd))
                sweeps.append(plan)
            self._plans = (threads, sweeps[0], sweeps[1])
        return self._plans[1], self._plans[2]

    def _sweeps_fused(self, yc: torch.Tensor, y: torch.Tensor) -> None:
        """Both triangular sweeps in place through :func:`_level_kernel` (sums in registers).

        100k-vertex torus, complex factor, 8 columns: 16-21 ms per solve against 41-68 ms
        through torch's products; 64 columns: 198-212 against 499-518 ms (benchmarks/README.md).
        """
        Y = y.numpy()
        lower, upper = self._plan(fused._threads())
        rows = max(e - a for a, e, *_ in lower)
        if self._tmp is None or self._tmp.shape != (rows, Y.shape[1]):
            self._tmp = np.empty((rows, Y.shape[1]), dtype=Y.dtype)
        for level in lower:
            _level_kernel(Y, *level, self._tmp, self.is_complex)
        yc.mul_(self.inv_pivots[:, None])
        for level in reversed(upper):
            _level_kernel(Y, *level, self._tmp, self.is_complex)

    def _mm(self, M: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """``M K`` for the real form ``K`` of a block; complex: ``M = [Re; Im]`` stacked.

        Returns a real block, or for complex data the complex ``(m, C)`` product.
        """
        P = torch.mm(M, K)
        if not self.is_complex:
            return P
        m = P.shape[0] // 2
        Pc = torch.view_as_complex(P.view(2 * m, -1, 2))  # rows: Re M x, then Im M x
        return torch.add(Pc[:m], Pc[m:], alpha=1j)

    def _level(self, yc: torch.Tensor, y: torch.Tensor, a: int, e: int, B: Any, D: Any,
               known: torch.Tensor) -> None:
        """``y[a:e] = D (y[a:e] - B known)`` in place (``yc``: ``y`` as complex, or ``y``)."""
        if B is not None:
            if self.is_complex:
                yc[a:e].sub_(self._mm(B.torch(), known))
            else:
                y[a:e].addmm_(B.torch(), known, alpha=-1)
        if D is not None:
            yc[a:e].copy_(self._mm(D.torch(), y[a:e]))
