"""Generalized eigensolver: dense agreement, M-orthonormality, residuals, real meshes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.linalg as la
import scipy.sparse as sp

import manifoldmp as mmp
from manifoldmp.errors import ParameterError
from manifoldmp.spectral.eigen import (
    EigenSolverError,
    _factorize,
    fill_reducing_ordering,
    generalized_eigsh,
    residuals,
)
from tests.conftest import ALL_SHARED_MESHES, shared_mesh


@pytest.fixture(scope="module")
def sphere4() -> mmp.Surface:
    return mmp.meshes.icosphere(4)  # 2562 vertices: above the dense limit


@pytest.mark.parametrize("n", [0, 1, 2])
def test_matches_dense_generalized_eigh(sphere4: mmp.Surface, n: int) -> None:
    L = mmp.connection_laplacian(sphere4, n)
    m = sphere4.vertex_areas
    k = 40
    res = generalized_eigsh(L, m, k, tol=1e-10)
    assert res.n_solves > 0  # the iterative path ran
    ref = la.eigh(L.toarray(), np.diag(m), eigvals_only=True, subset_by_index=[0, k - 1])
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-9, atol=1e-9)
    Phi = res.eigenvectors
    G = Phi.conj().T @ (m[:, None] * Phi)
    np.testing.assert_allclose(G, np.eye(k), atol=1e-10)
    assert np.all(np.diff(res.eigenvalues) >= -1e-12)
    assert res.residuals.max() < 1e-10
    np.testing.assert_allclose(res.residuals, residuals(L, m, res.eigenvalues, Phi))
    if n:
        assert np.iscomplexobj(Phi)


def test_sphere_spectrum_and_multiplicities(sphere4: mmp.Surface) -> None:
    lam = generalized_eigsh(mmp.connection_laplacian(sphere4, 1), sphere4.vertex_areas,
                            16).eigenvalues
    # l(l+1) - 1 with complex multiplicity 2l + 1: l = 1 (x3), 2 (x5), 3 (x7)
    np.testing.assert_allclose(lam[:3], 1.0, rtol=5e-3)
    np.testing.assert_allclose(lam[3:8], 5.0, rtol=5e-3)
    np.testing.assert_allclose(lam[8:15], 11.0, rtol=5e-3)
    assert lam[15] > 18.0


def test_restarts_and_small_blocks_agree(sphere4: mmp.Surface) -> None:
    L = mmp.connection_laplacian(sphere4, 0)
    m = sphere4.vertex_areas
    a = generalized_eigsh(L, m, 30, block_size=4, max_basis=48, tol=1e-10)
    b = generalized_eigsh(L, m, 30, tol=1e-10)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-10, atol=1e-10)
    assert a.residuals.max() < 1e-10


@pytest.mark.parametrize("n", [0, 1])
def test_inertia_count_matches_dense(sphere4: mmp.Surface, n: int) -> None:
    from manifoldmp.spectral.eigen import count_below, fill_reducing_ordering

    L = mmp.connection_laplacian(sphere4, n)
    m = sphere4.vertex_areas
    lam = generalized_eigsh(L, m, 40).eigenvalues
    perm = fill_reducing_ordering(L)   # one ordering reused for every shift of the pattern
    for mu in (0.5, 3.0, 8.0, 15.0, 25.0):
        assert count_below(L, m, mu) == int(np.sum(lam < mu))
        assert count_below(L, m, mu, perm=perm) == int(np.sum(lam < mu))
    for bad in (perm[:-1], np.zeros_like(perm), perm.astype(float)):
        with pytest.raises(mmp.ParameterError, match="perm must be a permutation"):
            count_below(L, m, 1.0, perm=bad)


def test_factorize_shifted_reuses_an_ordering_and_rejects_a_bad_one(sphere4: mmp.Surface
                                                                     ) -> None:
    from manifoldmp.spectral.eigen import fill_reducing_ordering
    from manifoldmp.spectral.implicit import factorize_shifted

    L = mmp.connection_laplacian(sphere4, 1)
    m = sphere4.vertex_areas
    perm = fill_reducing_ordering(L)
    b = np.random.default_rng(0).standard_normal((L.shape[0], 3)) + 0j
    x = factorize_shifted(L, m, 0.01, perm=perm).solve(b)
    K = (np.diag(m) + 0.01 * L.toarray())
    np.testing.assert_allclose(K @ x, b, atol=1e-12 * np.abs(b).max())
    for bad in (perm[:-1], np.zeros_like(perm), perm.astype(float)):
        with pytest.raises(mmp.ParameterError, match="perm must be a permutation"):
            factorize_shifted(L, m, 0.01, perm=bad)


def test_an_ordering_shared_between_types_gives_the_same_pairs(sphere4: mmp.Surface) -> None:
    from manifoldmp.spectral.eigen import fill_reducing_ordering

    m = sphere4.vertex_areas
    perm = fill_reducing_ordering(mmp.connection_laplacian(sphere4, 0))   # type 0's pattern
    for n in (1, 2):
        L = mmp.connection_laplacian(sphere4, n)
        np.testing.assert_array_equal(perm, fill_reducing_ordering(L))   # the same pattern
        a = generalized_eigsh(L, m, 12, perm=perm)
        b = generalized_eigsh(L, m, 12)
        np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
        np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
    for bad in (perm[:-1], np.zeros_like(perm), perm.astype(float)):
        with pytest.raises(ParameterError, match="perm must be a permutation"):
            generalized_eigsh(L, m, 12, perm=bad)


def test_deterministic(sphere4: mmp.Surface) -> None:
    L = mmp.connection_laplacian(sphere4, 2)
    a = generalized_eigsh(L, sphere4.vertex_areas, 12, seed=3)
    b = generalized_eigsh(L, sphere4.vertex_areas, 12, seed=3)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)


@pytest.mark.parametrize("n", [0, 1])
def test_nested_dissection_factor_solves_and_has_less_fill(n: int) -> None:
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    S = mmp.meshes.torus(n_major=100, n_minor=62)
    K = (mmp.connection_laplacian(S, n) + sp.diags(S.vertex_areas)).tocsc()
    perm = fill_reducing_ordering(K)
    assert np.array_equal(np.sort(perm), np.arange(S.n_vertices))  # a permutation
    lu = _factorize(K)
    mmd = sla.splu(K, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                   options={"SymmetricMode": True})
    assert lu.lu.L.nnz < 0.9 * mmd.L.nnz
    rng = np.random.default_rng(0)
    B = rng.standard_normal((S.n_vertices, 3)) + (1j * rng.standard_normal((S.n_vertices, 3))
                                                  if n else 0)
    for rhs in (B, B[:, 0]):
        x = lu.solve(rhs)
        assert np.abs(K @ x - rhs).max() < 1e-12 * np.abs(rhs).max() * abs(K).max()
        assert np.allclose(x, sla.spsolve(K, rhs), rtol=0, atol=1e-10 * np.abs(x).max())
    assert lu.negative_pivots() == 0  # positive definite: inertia through the permutation
    lam = generalized_eigsh(mmp.connection_laplacian(S, n), S.vertex_areas, 40).eigenvalues
    j = int(np.argmax(np.diff(lam[:30])))  # widest gap among the first 30
    mu = 0.5 * (lam[j] + lam[j + 1])       # K - (1 + mu) M = L - mu M
    shifted = _factorize((K - (1.0 + mu) * sp.diags(S.vertex_areas)).tocsc(), lu.perm)
    assert shifted.negative_pivots() == j + 1


@pytest.mark.parametrize("n", [0, 1])
def test_refinement_reaches_the_rounding_level_of_arpack(n: int,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # Without the final inverse-iteration sweep the residual stagnated at 2.4e-12 (n = 0) and
    # 2.5e-12 (n = 1) here, after 736 solves; ARPACK reaches the 1e-12 range. n = 0 sweeps
    # within the swept pairs; n = 1 couples above tol / 10 here and takes the full step
    S = mmp.meshes.torus(n_major=100, n_minor=62)
    L = mmp.connection_laplacian(S, n)
    with caplog.at_level("DEBUG", logger="manifoldmp.spectral.eigen"):
        res = generalized_eigsh(L, S.vertex_areas, 48, tol=1e-12)
    assert res.residuals.max() <= 1e-12
    assert "stagnates" not in caplog.text
    assert "refinement sweep" in caplog.text
    if n == 0:
        assert "refinement sweep of" in caplog.text
    np.testing.assert_allclose(residuals(L, S.vertex_areas, res.eigenvalues, res.eigenvectors),
                               res.residuals, rtol=1e-8)
    assert np.all(np.diff(res.eigenvalues) >= 0)
    Phi = res.eigenvectors
    np.testing.assert_allclose(Phi.conj().T @ (S.vertex_areas[:, None] * Phi), np.eye(48),
                               atol=1e-12)


@pytest.mark.parametrize("n", [0, 1])
def test_tol_below_rounding_returns_the_best_pairs_early(n: int,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # 1e-14 is below what float64 allows here (6e-13): the solver says so, stops once inverse
    # iteration stops gaining, and returns the best pairs it had (not the last Ritz pairs)
    S = mmp.meshes.torus(n_major=100, n_minor=62)
    L = mmp.connection_laplacian(S, n)
    with caplog.at_level("WARNING", logger="manifoldmp.spectral.eigen"):
        res = generalized_eigsh(L, S.vertex_areas, 48, tol=1e-14)
    assert "stagnates" in caplog.text
    assert res.residuals.max() < 1.5e-12  # before the final sweeps: 2.9e-12, 1312-1792 solves
    assert res.n_solves < 1000
    lam = generalized_eigsh(L, S.vertex_areas, 48).eigenvalues  # default tol 1e-9
    assert np.allclose(res.eigenvalues, lam, rtol=0, atol=1e-9 * lam[-1])


def test_bad_arguments(sphere4: mmp.Surface) -> None:
    L = mmp.connection_laplacian(sphere4, 0)
    m = sphere4.vertex_areas
    with pytest.raises(ParameterError, match="k must be at most"):
        generalized_eigsh(L, m, L.shape[0] + 1)
    with pytest.raises(ParameterError, match="mass must have shape"):
        generalized_eigsh(L, m[:-1], 4)
    with pytest.raises(ParameterError, match="finite and positive"):
        generalized_eigsh(L, -m, 4)
    with pytest.raises(ParameterError, match=r"scipy\.sparse"):
        generalized_eigsh(L.toarray(), m, 4)
    with pytest.raises(ParameterError, match="too small"):
        generalized_eigsh(L, m, 30, block_size=8, max_basis=32)
    with pytest.raises(EigenSolverError, match="did not converge"):
        generalized_eigsh(L, m, 30, block_size=2, max_basis=34, max_restarts=0)


@pytest.mark.parametrize("n", [0, 1])
def test_indefinite_operator_gives_the_algebraically_smallest(sphere4: mmp.Surface, n: int,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    # Three strongly negative diagonal entries (what bad triangles do to a connection
    # Laplacian, localized): eigenvalues near -6.5 / m_j ~ -1300, far below lambda_20 ~ 20.
    m = sphere4.vertex_areas
    L = mmp.connection_laplacian(sphere4, n)
    d = np.zeros(L.shape[0])
    d[[7, 900, 2000]] = -10.0
    L = (L + sp.diags(d)).tocsr()
    ref = la.eigh(L.toarray(), np.diag(m), subset_by_index=[0, 19], eigvals_only=True)
    assert np.sum(ref < 0) == 3
    with caplog.at_level("WARNING", logger="manifoldmp.spectral.eigen"):
        res = generalized_eigsh(L, m, 20)   # 3 below the shift, fewer than k: shift kept
    assert "returned with the smallest ones above it" in caplog.text
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    assert res.residuals.max() < 1e-9
    Phi = res.eigenvectors
    np.testing.assert_allclose(Phi.conj().T @ (m[:, None] * Phi), np.eye(20), atol=1e-10)
    caplog.clear()
    with caplog.at_level("WARNING", logger="manifoldmp.spectral.eigen"):
        two = generalized_eigsh(L, m, 2)    # as many below as wanted: shift moved below them
    assert "moving the shift below the spectrum" in caplog.text
    np.testing.assert_allclose(two.eigenvalues, ref[:2], rtol=1e-10)


# Cases over 30 s on two cores run only in the full suite: the type-1 connection Laplacian of
# the face range scan is indefinite (29 negative eigenvalues down to -6.8 from its negative
# cotan weights; about a minute), and the 200k-vertex koala takes 25-40 s per type.
SLOW = {("face_rangescan.ply", 1), ("koala_loop200k.ply", 0), ("koala_loop200k.ply", 1)}


@pytest.mark.parametrize("name", ALL_SHARED_MESHES)
@pytest.mark.parametrize("n", [0, 1])
def test_shared_meshes(name: str, n: int) -> None:
    if (name, n) in SLOW and not os.environ.get("MANIFOLDMP_FULL_TESTS"):
        pytest.skip("slow (minutes): set MANIFOLDMP_FULL_TESTS=1")
    S = mmp.Surface.load(shared_mesh(name))
    res = generalized_eigsh(mmp.connection_laplacian(S, n), S.vertex_areas, 24)
    assert np.all(np.isfinite(res.eigenvalues))
    assert res.residuals.max() < 1e-8, (name, n, res.residuals.max())
    if n == 0:  # one zero eigenvalue per connected component, then positive ones
        assert np.sum(np.abs(res.eigenvalues) < 1e-8) == min(S.n_components, 24)


def test_progress_bar_counts_converged_pairs(capsys: pytest.CaptureFixture) -> None:
    S = mmp.meshes.icosphere(4)   # 2562 vertices: above the dense limit
    L = mmp.connection_laplacian(S, 0)
    quiet = generalized_eigsh(L, S.vertex_areas, 12, progress=False)
    assert capsys.readouterr().err == ""
    shown = generalized_eigsh(L, S.vertex_areas, 12, progress=True)
    err = capsys.readouterr().err
    assert "eigenpairs" in err and "12/12" in err and "solves=" in err
    np.testing.assert_array_equal(shown.eigenvalues, quiet.eigenvalues)
    with pytest.raises(ParameterError, match="progress must be a bool"):
        generalized_eigsh(L, S.vertex_areas, 12, progress="yes")


def _spoiled_pairs(sphere4: mmp.Surface, n: int, bad: np.ndarray):
    """Converged pairs of sphere4 with noise in the stiff directions on the columns ``bad``."""
    from manifoldmp.spectral.eigen import _orthonormalize

    L = mmp.connection_laplacian(sphere4, n)
    m = sphere4.vertex_areas
    res = generalized_eigsh(L, m, 16, tol=1e-11)
    s = 1.0 / np.sqrt(m)
    B = (sp.diags(s) @ L @ sp.diags(s)).tocsr()
    lu = _factorize((B + 0.1 * sp.eye(B.shape[0])).tocsc())
    rng = np.random.default_rng(3)
    X = res.eigenvectors / s[:, None]
    noise = B @ (B @ rng.standard_normal((X.shape[0], len(bad))))
    X[:, bad] += 1e-9 * noise * (1 if n == 0 else 1 + 1j) / np.linalg.norm(noise, axis=0)
    X, _, _ = _orthonormalize(np.asfortranarray(X), None, rng)
    return L, m, s, B, lu, np.ascontiguousarray(X), res


@pytest.mark.parametrize("n", [0, 1])
def test_partial_refinement_sweeps_only_the_pairs_above_tol(sphere4: mmp.Surface,
                                                            n: int) -> None:
    # the final sweep runs on the pairs above tol only; the others enter its Rayleigh-Ritz
    # step unchanged. Spoil 3 of 16 converged pairs in the stiff directions, sweep those 3:
    # as good as a full sweep, with 3 solves where a full sweep takes 16
    from manifoldmp.spectral.eigen import _refine

    bad = np.array([2, 7, 11])
    L, m, s, B, lu, X, res = _spoiled_pairs(sphere4, n, bad)
    solved = []

    def apply_S(X: np.ndarray) -> np.ndarray:
        solved.append(X.shape[1])
        return lu.solve(X)

    rng = np.random.default_rng(4)
    spoiled = residuals(L, m, np.real(np.sum(X.conj() * (B @ X), axis=0)), s[:, None] * X)
    assert spoiled[bad].min() > 1e-8
    lam_p, Phi_p, _ = _refine(apply_S, B, X, s, rng, bad, res.eigenvalues)
    assert solved == [3]
    lam_f, Phi_f, _ = _refine(apply_S, B, X, s, rng)
    r_p, r_f = residuals(L, m, lam_p, Phi_p), residuals(L, m, lam_f, Phi_f)
    # one sweep gains lambda / lambda_stiff (measured: 5e-7 -> 1.0e-9 both ways, n = 0;
    # 1.4e-6 -> 1.3e-9 partial, 1.1e-9 full, n = 1)
    assert r_p.max() < 1e-2 * spoiled.max()
    assert r_p.max() < 2 * r_f.max()
    np.testing.assert_allclose(lam_p, res.eigenvalues, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Phi_p.conj().T @ (m[:, None] * Phi_p), np.eye(16), atol=1e-12)


@pytest.mark.parametrize("n", [0, 1])
def test_sweep_within_the_swept_pairs_matches_the_full_step(sphere4: mmp.Surface,
                                                            n: int) -> None:
    # at the rounding level the swept pairs hardly couple to the kept ones: the step within
    # the swept columns alone gives what the full Rayleigh-Ritz step gives, and leaves the
    # kept columns as they are (bit for bit)
    from manifoldmp.spectral.eigen import _floor, _refine, _sweep_block, _swept_only

    bad = np.array([2, 7, 11])
    L, m, s, B, lu, X, res = _spoiled_pairs(sphere4, n, bad)
    rng = np.random.default_rng(5)
    lam = np.real(np.sum(X.conj() * (B @ X), axis=0))
    block = _sweep_block(lu.solve, B, X, rng, bad)
    Z, H1, H22 = block
    np.testing.assert_allclose(Z.conj().T @ Z, np.eye(3), atol=1e-13)
    kept = np.setdiff1d(np.arange(16), bad)
    assert np.abs(X[:, kept].conj().T @ Z).max() < 1e-13  # orthogonal to the kept columns
    np.testing.assert_allclose(H1, X.conj().T @ (B @ Z), rtol=0, atol=1e-12)
    np.testing.assert_allclose(H22, Z.conj().T @ (B @ Z), rtol=0, atol=1e-12)
    floor = _floor(lam, m)
    assert _swept_only(*block, bad, 0.0, floor) is None   # no allowance: the full step
    alone = _swept_only(*block, bad, 1e-2 * 1e-9, floor)
    assert alone is not None
    mu, Zn = alone
    lam_f, Phi_f, _ = _refine(lu.solve, B, X.copy(), s, rng, bad, lam, block=block)
    lam_a = lam.copy()
    lam_a[bad] = mu
    np.testing.assert_allclose(np.sort(lam_a), lam_f, rtol=1e-12)
    np.testing.assert_allclose(np.sort(lam_a), res.eigenvalues, rtol=1e-10, atol=1e-12)
    Phi_a = s[:, None] * X
    Phi_a[:, bad] = s[:, None] * Zn
    np.testing.assert_allclose(Phi_a.conj().T @ (m[:, None] * Phi_a), np.eye(16), atol=1e-12)
    r_a = residuals(L, m, lam_a, Phi_a)
    r_f = residuals(L, m, lam_f, Phi_f)
    assert r_a.max() < 1.5 * r_f.max() and r_a.max() < 1e-8


def test_sweep_of_a_pair_coupled_to_a_kept_one_takes_the_full_step(sphere4: mmp.Surface
                                                                   ) -> None:
    # two pairs of different eigenvalues mixed half and half: sweeping one of them alone
    # cannot separate them (its partner is kept), the coupling says so, and the full step does
    from manifoldmp.spectral.eigen import _floor, _refine, _sweep_block, _swept_only

    L, m, s, B, lu, X, res = _spoiled_pairs(sphere4, 0, np.array([], dtype=int))
    a, b = 3, 9   # lambda 2 and 6
    X[:, [a, b]] = (X[:, [a, b]] @ np.array([[1.0, 1.0], [1.0, -1.0]])) / np.sqrt(2.0)
    lam = np.real(np.sum(X.conj() * (B @ X), axis=0))
    rng = np.random.default_rng(6)
    block = _sweep_block(lu.solve, B, X, rng, np.array([a]))
    assert _swept_only(*block, np.array([a]), 1e-10, _floor(lam, m)) is None
    lam_f, Phi_f, _ = _refine(lu.solve, B, X, s, rng, np.array([a]), lam, block=block)
    np.testing.assert_allclose(lam_f, res.eigenvalues, rtol=1e-8, atol=1e-10)
    assert residuals(L, m, lam_f, Phi_f).max() < 1e-6


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("swaps", [1, 22])
def test_sort_pairs_moves_the_columns_with_their_values(order: str, swaps: int) -> None:
    from manifoldmp.spectral.eigen import _sort_pairs

    rng = np.random.default_rng(7)
    V, k = 1300, 48   # rows not a multiple of the 512-row blocks
    lam = np.sort(rng.random(k))
    perm = np.arange(k)
    for j in range(0, 2 * swaps, 2):   # neighbours swapped, as in degenerate clusters
        perm[j], perm[j + 1] = perm[j + 1], perm[j]
    X = rng.standard_normal((V, k)) + 1j * rng.standard_normal((V, k))
    Xp = np.asarray(X[:, perm], order=order)
    Y = np.ascontiguousarray(rng.standard_normal((V, k))[:, perm])
    lp, r = lam[perm].copy(), np.arange(k, dtype=float)[perm]
    ptr = Xp.__array_interface__["data"][0]
    _sort_pairs(lp, r, Xp, Y)
    np.testing.assert_array_equal(lp, lam)
    np.testing.assert_array_equal(r, np.arange(k))
    np.testing.assert_array_equal(Xp, X)
    assert Xp.__array_interface__["data"][0] == ptr and Xp.flags[f"{order}_CONTIGUOUS"]
    sorted_lam = lam.copy()
    _sort_pairs(sorted_lam, X)   # nothing to move
    np.testing.assert_array_equal(sorted_lam, lam)


@pytest.mark.parametrize("n", [0, 1])
def test_residuals_in_row_blocks_match_the_whole_array_formula(n: int) -> None:
    # the row-block loop against the obvious formula, on more rows than one block
    S = mmp.meshes.torus(n_major=100, n_minor=62)  # 6200 vertices: two row blocks
    L = mmp.connection_laplacian(S, n)
    m = S.vertex_areas
    rng = np.random.default_rng(4)
    Phi = rng.standard_normal((S.n_vertices, 5))
    if n:
        Phi = Phi + 1j * rng.standard_normal(Phi.shape)
    lam = np.array([0.0, 1e-3, 2.0, 30.0, 400.0])
    R = L @ Phi - (m[:, None] * Phi) * lam
    ref = np.sqrt(np.sum(np.abs(R) ** 2 / m[:, None], axis=0))
    floor = max(1e-3 * 400.0, 4 * np.pi / m.sum())
    np.testing.assert_allclose(residuals(L, m, lam, Phi), ref / np.maximum(lam, floor),
                               rtol=1e-13)


@pytest.mark.parametrize("is_complex", [False, True])
@pytest.mark.parametrize("order", ["F", "C"])
def test_projection_and_products_match_numpy(is_complex: bool, order: str) -> None:
    # the fast paths of the orthogonalization (torch gemm in place for Fortran blocks, numpy
    # for C-ordered ones) and the torch dense products (adjoint with a thin or a wide right
    # factor, reversed views) against the obvious numpy formulas
    from manifoldmp.spectral.eigen import _mm, _project_out, _rotate

    rng = np.random.default_rng(8)

    def rand(*shape: int) -> np.ndarray:
        A = rng.standard_normal(shape)
        return A + 1j * rng.standard_normal(shape) if is_complex else A

    Q = np.asfortranarray(la.qr(rand(500, 40), mode="economic")[0])
    W0 = rand(500, 6)
    W = np.asfortranarray(W0) if order == "F" else np.ascontiguousarray(W0)
    out, C = _project_out(W, Q)
    np.testing.assert_allclose(C, Q.conj().T @ W0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out, W0 - Q @ (Q.conj().T @ W0), rtol=0, atol=1e-12)
    if order == "F":
        assert np.shares_memory(out, W)  # overwritten in place, as documented
    Y = rand(40, 7)[:, ::-1]  # a reversed view (negative stride)
    np.testing.assert_allclose(_mm(Q, Y), Q @ Y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_mm(Q, W0, adjoint=True), Q.conj().T @ W0, rtol=0, atol=1e-12)
    wide = rand(500, 30)  # 2 * 30 > 40 columns of Q: the direct product, not (B^H A)^H
    np.testing.assert_allclose(_mm(Q, wide, adjoint=True), Q.conj().T @ wide, rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(_mm(W, Q, adjoint=True), W.conj().T @ Q, rtol=0, atol=1e-12)
    # in-place rotation by row blocks (a last block shorter than the others), into the first
    # columns of the same array
    A0 = rand(500, 40)
    A = np.array(A0, order=order)   # a copy: A0 stays the reference
    B = rand(40, 25)
    out = _rotate(A, B, rows=64)
    assert np.shares_memory(out, A) and out.shape == (500, 25)
    np.testing.assert_allclose(out, A0 @ B, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(A[:, 25:], A0[:, 25:])  # the other columns are untouched


def test_check_schedule_follows_the_residual_trend() -> None:
    from manifoldmp.spectral.eigen import _next_check

    b, every = 8, 16
    assert _next_check(144, 20.0, (0, np.inf), 1e-11, b, every) == 32      # no trend yet
    assert _next_check(176, 30.0, (144, 20.0), 1e-11, b, every) == 32      # not falling
    # a decade per 16 columns, 4 decades to go: 0.7 * 64 = 44.8 -> 48 columns
    assert _next_check(232, 1e-7, (216, 1e-6), 1e-11, b, every) == 48
    assert _next_check(232, 2e-11, (216, 2e-10), 1e-11, b, every) == b     # at least a block
    assert _next_check(232, 1e-2, (216, 1.1e-2), 1e-11, b, every) == 4 * every   # capped
    assert _next_check(232, 1e-12, (216, 1e-10), 1e-11, b, every) == b    # already there


def test_ritz_selection_with_negative_values() -> None:
    # wanted order of the Lanczos Ritz pairs: lambda = sigma + 1 / theta ascending, i.e. the
    # negative theta (lambda below sigma) from the one nearest zero, then the largest positive
    from manifoldmp.spectral.eigen import _ritz

    rng = np.random.default_rng(3)
    w = np.array([-5.0, -0.5, 1e-3, 0.2, 1.0, 3.0, 40.0])
    U = la.qr(rng.standard_normal((7, 7)))[0]
    T = (U * w) @ U.T
    theta, Y, neg = _ritz(T.copy(), 5, n_neg=2)
    np.testing.assert_allclose(theta, [-0.5, -5.0, 40.0, 3.0, 1.0], rtol=1e-12)
    assert neg == 2
    sigma = 0.01
    assert np.all(np.diff(sigma + 1.0 / theta) > 0)
    np.testing.assert_allclose(T @ Y, Y * theta, rtol=0, atol=1e-12)
    theta0, _, neg0 = _ritz(T.copy(), 3)   # no wanted negatives: the three largest
    np.testing.assert_allclose(theta0, [40.0, 3.0, 1.0], rtol=1e-12)
    assert neg0 == 0


@pytest.mark.parametrize("is_complex", [False, True])
@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("b", [6, 40])
def test_orthonormalize_identity(is_complex: bool, order: str, b: int) -> None:
    # W_in = Q C + W_out R with W_out orthonormal and orthogonal to Q, for the thin blocks
    # (torch products leaving a Fortran-ordered block) and the Rayleigh-Ritz-sized ones, with a
    # local pass; a rank-deficient block gets random directions and zero rows in R
    from manifoldmp.spectral.eigen import _orthonormalize

    rng = np.random.default_rng(12)

    def rand(*shape: int) -> np.ndarray:
        A = rng.standard_normal(shape)
        return A + 1j * rng.standard_normal(shape) if is_complex else A

    V = 3000
    Q = np.asfortranarray(la.qr(rand(V, 50), mode="economic")[0])
    W0 = rand(V, b)
    W0[:, 1] = W0[:, 0] * 2.0 + Q[:, :3] @ rand(3)  # rank loss once Q is projected out
    W = np.asfortranarray(W0) if order == "F" else np.ascontiguousarray(W0)
    Wo, C, R = _orthonormalize(W, Q, rng, local=40)
    eye = np.eye(b)
    np.testing.assert_allclose(Wo.conj().T @ Wo, eye, rtol=0, atol=1e-13)
    np.testing.assert_allclose(Q.conj().T @ Wo, 0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(Q @ C + Wo @ R, W0, rtol=0, atol=1e-11 * np.abs(W0).max())
    assert np.sum(np.all(R == 0, axis=1)) == 1  # the dependent column was replaced


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("order", ["C", "F"])
def test_gram_of_a_thin_block(dtype: type, order: str) -> None:
    # W^H W through herk / syrk (thin Fortran-ordered blocks) or torch, against numpy; exactly
    # Hermitian either way (Cholesky-QR reads only its upper triangle)
    from manifoldmp.spectral.eigen import _gram

    rng = np.random.default_rng(8)
    W = rng.standard_normal((3000, 8)).astype(dtype)
    if dtype == np.complex128:
        W = W + 1j * rng.standard_normal(W.shape)
    W = np.asarray(W, order=order)
    for big in (False, True):
        G = _gram(W, big)
        np.testing.assert_allclose(G, W.conj().T @ W, rtol=0, atol=1e-12 * np.abs(G).max())
        np.testing.assert_array_equal(G, G.conj().T)
