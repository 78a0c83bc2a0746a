"""Level-scheduled block solves with a SuperLU factor, against SuperLU and dense solves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import manifoldmp as mmp
import manifoldmp.spectral.supernodal as sn
from manifoldmp.spectral.eigen import _factorize, generalized_eigsh
from manifoldmp.spectral.supernodal import LevelSolver


def _system(S: mmp.Surface, n: int, shift: float) -> sp.csc_matrix:
    return (mmp.connection_laplacian(S, n) + shift * sp.diags(S.vertex_areas)).tocsc()


def _rhs(V: int, C: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((V, C))
    return B + 1j * rng.standard_normal((V, C)) if n else B


@pytest.mark.parametrize("n", [0, 1, 2])
def test_matches_superlu_and_dense_solves(n: int) -> None:
    S = mmp.meshes.torus(n_major=60, n_minor=30)
    A = _system(S, n, 1.0)
    f = _factorize(A)
    solver = LevelSolver.from_superlu(f.lu)
    assert solver is not None
    assert len(solver.lower) < 0.05 * S.n_vertices  # levels, not one column at a time
    B = _rhs(S.n_vertices, 5, n)
    Bp = B[f.perm]
    x = solver.solve(Bp)
    ref = f.lu.solve(np.asfortranarray(Bp))  # the slow obvious reference
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    # through SparseFactor, in the original numbering, against a dense solve
    assert f.prepare_block_solves()
    dense = np.linalg.solve(A.toarray(), B)
    np.testing.assert_allclose(f.solve(B), dense, rtol=0, atol=1e-11 * np.abs(dense).max())
    np.testing.assert_allclose(f.solve(B[:, 0]), dense[:, 0], rtol=0,
                               atol=1e-11 * np.abs(dense).max())


@pytest.mark.parametrize("n", [0, 1])
def test_register_kernels_match_torch_products_and_superlu(
        monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    # the level kernels with their sums in registers (every tile width: 1 to 40 columns, real
    # and interleaved complex; one, two and three threads, so that the rows of a level split
    # by work) against the torch products they replace and SuperLU's own solve
    from manifoldmp.spectral import fused

    if not fused.fused_available():
        pytest.skip("numba is not installed")
    S = mmp.meshes.torus(n_major=50, n_minor=24)
    A = _system(S, n, 0.5)
    f = _factorize(A)
    solver = LevelSolver.from_superlu(f.lu)
    assert solver is not None
    for C, threads in ((1, 1), (2, 2), (3, 3), (5, 2), (8, 2), (13, 3), (16, 1), (21, 2),
                       (40, 2)):
        B = _rhs(S.n_vertices, C, n, seed=C)[f.perm]
        ref = f.lu.solve(np.asfortranarray(B))
        monkeypatch.setattr(fused, "_threads", lambda threads=threads: threads)
        x = solver.solve(B)
        monkeypatch.setattr(fused, "fused_available", lambda: False)
        y = solver.solve(B)                          # torch's products
        monkeypatch.undo()
        scale = np.abs(ref).max()
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-13 * scale)
        assert solver._plans[0] == threads and len(solver._plans[1][0][-2]) == threads + 1
        xf = solver.solve(np.asfortranarray(B))      # the result keeps b's memory order
        np.testing.assert_allclose(xf, x, rtol=0, atol=1e-13 * scale)
        assert xf.flags.f_contiguous and (C == 1 or not xf.flags.c_contiguous)


def test_balanced_row_ranges_split_the_work() -> None:
    indptr = np.concatenate([[0], np.cumsum([100, 1, 1, 1, 1, 1, 1, 1, 100, 1])])
    for parts in (1, 2, 3, 7):
        b = sn._balanced(indptr, parts)
        assert b[0] == 0 and b[-1] == 10 and len(b) == parts + 1 and np.all(np.diff(b) >= 0)
    b = sn._balanced(indptr, 2)
    work = [indptr[e] - indptr[a] + e - a for a, e in itertools.pairwise(b)]
    assert max(work) <= 110   # the two heavy rows go to different threads


@pytest.mark.parametrize("n", [0, 1])
def test_indefinite_boundary_and_disconnected(n: int) -> None:
    # L - mu M with mu inside the spectrum (negative pivots), a mesh with boundary and two
    # components: the factor still has the level structure and the solves agree
    S1 = mmp.meshes.icosphere(3)
    keep = np.flatnonzero(S1.vertices[S1.faces].mean(axis=1)[:, 2] < 0.6)
    V1 = S1.vertices
    F1 = S1.faces[keep]
    V2 = mmp.meshes.icosphere(2).vertices + 3.0
    F2 = mmp.meshes.icosphere(2).faces + len(V1)
    S = mmp.Surface(np.vstack([V1, V2]), np.vstack([F1, F2]))
    A = _system(S, n, -7.0)
    f = _factorize(A)
    assert f.negative_pivots() > 0
    assert f.prepare_block_solves()
    B = _rhs(S.n_vertices, 3, n, seed=1)
    dense = np.linalg.solve(A.toarray(), B)
    np.testing.assert_allclose(f.solve(B), dense, rtol=0, atol=1e-10 * np.abs(dense).max())


def test_short_groups_give_the_same_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    S = mmp.meshes.torus(n_major=40, n_minor=20)
    A = _system(S, 1, 1.0)
    f = _factorize(A)
    long = LevelSolver.from_superlu(f.lu)
    monkeypatch.setattr(sn, "MAX_GROUP", 3)  # separators cut into chains of 3 columns
    short = LevelSolver.from_superlu(f.lu)
    assert len(short.lower) > len(long.lower)
    B = _rhs(S.n_vertices, 4, 1)
    np.testing.assert_allclose(short.solve(B), long.solve(B), rtol=0,
                               atol=1e-12 * np.abs(long.solve(B)).max())


@pytest.mark.parametrize("shape", [(50, 80), (1, 5), (7, 7)])
def test_stacked_complex_matrix_is_scipys_vstack(shape: tuple[int, int]) -> None:
    """The stacked ``[Re M; Im M]`` against scipy's vstack, explicit zeros and all."""
    M = (sp.random(*shape, density=0.2, format="csr", random_state=1)
         + 1j * sp.random(*shape, density=0.2, format="csr", random_state=2)).tocsr()
    M.data[::3] = 0.0   # explicit zeros stay entries in both halves
    ref = sp.vstack([M.real, M.imag], format="csr")
    T = sn._stacked(M, True)
    assert tuple(T.shape) == ref.shape
    np.testing.assert_array_equal(T.crow_indices().numpy(), ref.indptr)
    np.testing.assert_array_equal(T.col_indices().numpy(), ref.indices)
    np.testing.assert_array_equal(T.values().numpy(), ref.data)
    R = sn._stacked(M.real.tocsr(), False)   # a real matrix stays as it is
    np.testing.assert_array_equal(R.to_dense().numpy(), M.real.toarray())


def test_a_pivoted_factor_is_refused() -> None:
    S = mmp.meshes.icosphere(2)
    A = _system(S, 0, 1.0)
    rng = np.random.default_rng(2)
    A = (A + sp.random(A.shape[0], A.shape[0], density=0.01, random_state=rng)).tocsc()
    lu = sla.splu(A, permc_spec="COLAMD")  # unsymmetric, partial pivoting
    assert LevelSolver.from_superlu(lu) is None


def test_eigenpairs_the_same_with_and_without_block_solves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    S = mmp.meshes.torus(n_major=60, n_minor=30)
    L = mmp.connection_laplacian(S, 1)
    fast = generalized_eigsh(L, S.vertex_areas, 16, verify=False)
    monkeypatch.setattr("manifoldmp.spectral.eigen.SparseFactor.prepare_block_solves",
                        lambda self: False)
    slow = generalized_eigsh(L, S.vertex_areas, 16, verify=False)
    np.testing.assert_allclose(fast.eigenvalues, slow.eigenvalues, rtol=1e-10)
    assert fast.residuals.max() < 1e-9


def test_solve_builds_the_level_solver_by_itself_and_agrees(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # multi-column solves switch to the level solver once AUTO_LEVEL_COLUMNS columns went
    # through SuperLU; every call, before and after,
    # agrees with a dense solve, whatever the memory order and dtype of b; a complex b on a
    # real factor stays with SuperLU (which refuses it)
    from manifoldmp.spectral.eigen import SparseFactor

    monkeypatch.setattr(SparseFactor, "AUTO_LEVEL_MIN_ORDER", 100)
    monkeypatch.setattr(SparseFactor, "AUTO_LEVEL_COLUMNS", 12)
    S = mmp.meshes.torus(n_major=40, n_minor=20)
    for n in (0, 1):
        A = _system(S, n, 1.0)
        f = _factorize(A)
        dense_inv = np.linalg.inv(A.toarray())
        switch = 2  # 12 columns solved before this call
        for i, order in enumerate("CFCFCF"):
            B = _rhs(S.n_vertices, 6, n, seed=i)
            B = np.asfortranarray(B) if order == "F" else B
            np.testing.assert_allclose(f.solve(B), dense_inv @ B, rtol=0,
                                       atol=1e-11 * np.abs(dense_inv @ B).max())
            assert bool(f.levels) == (i >= switch)
        B32 = np.random.default_rng(5).standard_normal((S.n_vertices, 3)).astype(np.float32)
        if n == 0:
            np.testing.assert_allclose(f.solve(B32), dense_inv @ B32, rtol=0, atol=1e-9)
            with pytest.raises(TypeError):
                f.solve(B32 + 1j * B32)
        else:
            np.testing.assert_allclose(f.solve(B32), dense_inv @ B32, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [0, 1])
def test_implicit_heat_the_same_with_level_solves(monkeypatch: pytest.MonkeyPatch,
                                                  n: int) -> None:
    import torch

    from manifoldmp.spectral.eigen import SparseFactor

    S = mmp.meshes.torus(n_major=40, n_minor=20)
    x = torch.from_numpy(_rhs(S.n_vertices, 16, n, seed=6))
    ref = mmp.HeatKernel(S, n, method="implicit", steps=3)(x, 1e-2)
    monkeypatch.setattr(SparseFactor, "AUTO_LEVEL_MIN_ORDER", 100)
    monkeypatch.setattr(SparseFactor, "AUTO_LEVEL_COLUMNS", 8)
    H = mmp.HeatKernel(S, n, method="implicit", steps=3)
    y = H(x, 1e-2)
    assert all(f.levels for f in H._factors.values())
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_a_deep_elimination_tree_is_refused() -> None:
    # a path graph factored in its natural order: one column per level (2000 levels), where
    # SuperLU's solve is faster; with nested dissection the same matrix has few levels
    from manifoldmp.spectral.eigen import _symmetric_lu

    V = 2000
    A = sp.diags([-np.ones(V - 1), 2.5 * np.ones(V), -np.ones(V - 1)], [-1, 0, 1]).tocsc()
    assert LevelSolver.from_superlu(_symmetric_lu(A, np.arange(V))) is None
    nd = _factorize(A)
    assert nd.prepare_block_solves() and len(nd.levels.lower) < 64
    B = _rhs(V, 3, 0, seed=7)
    np.testing.assert_allclose(nd.solve(B), np.linalg.solve(A.toarray(), B), rtol=0,
                               atol=1e-12)


def test_bad_arguments_get_clear_errors() -> None:
    from manifoldmp.errors import ParameterError

    S = mmp.meshes.torus(n_major=20, n_minor=10)
    f = _factorize(_system(S, 0, 1.0))
    with pytest.raises(ParameterError, match="SuperLU"):
        LevelSolver.from_superlu(f.lu.L)
    with pytest.raises(ParameterError, match="pivots"):
        LevelSolver.from_superlu(f.lu, np.ones(3))
    solver = LevelSolver.from_superlu(f.lu)
    V = S.n_vertices
    with pytest.raises(ParameterError, match=rf"\({V}, C\)"):
        solver.solve(np.ones(V))
    with pytest.raises(ParameterError, match=rf"\({V}, C\)"):
        solver.solve(np.ones((V + 1, 2)))
    with pytest.raises(ParameterError, match="perm"):
        solver.solve(np.ones((V, 2)), np.arange(V - 1))
    assert issubclass(ParameterError, ValueError)
