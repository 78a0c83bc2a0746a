"""The fused residual kernel against the explicit formula and against scipy's row-block path."""

import numpy as np
import pytest
import scipy.sparse as sp

import manifoldmp as mmp
from manifoldmp.errors import ParameterError
from manifoldmp.spectral import residual_norms
from manifoldmp.spectral.eigen import residuals
from manifoldmp.spectral.fused import fused_available

pytestmark = pytest.mark.skipif(not fused_available(), reason="numba is not installed")


@pytest.fixture(scope="module")
def sphere() -> mmp.Surface:
    return mmp.meshes.icosphere(5)   # 10242 vertices


def _block(V, k, complex_, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((V, k))
    if complex_:
        X = X + 1j * rng.standard_normal((V, k))
    return X


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("k", [7, 16])
def test_kernel_matches_the_formula(sphere, n, threads, k):
    L = sp.csr_matrix(mmp.connection_laplacian(sphere, n))
    m = sphere.vertex_areas
    X = _block(L.shape[0], k, n != 0)
    lam = np.linspace(0.0, 50.0, k)
    R = L @ X - (m[:, None] * lam[None, :]) * X
    ref = np.einsum("ij,ij,i->j", R.conj(), R, 1.0 / m).real
    out = residual_norms.residual_sq(L, m, lam, X, threads=threads)
    assert out is not None
    np.testing.assert_allclose(out, ref, rtol=1e-13)


@pytest.mark.parametrize("n", [0, 2])
def test_residuals_same_with_and_without_the_kernel(sphere, n, monkeypatch):
    L = mmp.connection_laplacian(sphere, n)
    m = sphere.vertex_areas
    X = _block(L.shape[0], 12, n != 0, seed=1)
    lam = np.linspace(1.0, 40.0, 12)
    fast = residuals(L, m, lam, X)
    monkeypatch.setattr(residual_norms, "residual_sq", lambda *a, **kw: None)
    slow = residuals(L, m, lam, X)
    np.testing.assert_allclose(fast, slow, rtol=1e-13)


def test_eigenpair_residuals_at_the_rounding_level(sphere):
    """Converged pairs: the kernel reads the same tiny residuals as scipy's path."""
    from manifoldmp.spectral.eigen import generalized_eigsh
    L = mmp.connection_laplacian(sphere, 1)
    res = generalized_eigsh(L, sphere.vertex_areas, 8, tol=1e-11)
    X = np.ascontiguousarray(res.eigenvectors)
    out = residual_norms.residual_sq(sp.csr_matrix(L), sphere.vertex_areas, res.eigenvalues, X)
    assert out is not None
    R = L @ X - (sphere.vertex_areas[:, None] * res.eigenvalues[None, :]) * X
    ref = np.einsum("ij,ij,i->j", R.conj(), R, 1.0 / sphere.vertex_areas).real
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    assert np.all(res.residuals <= 1e-11)


def test_not_usable_returns_none(sphere):
    L = sp.csr_matrix(mmp.connection_laplacian(sphere, 0))
    m = sphere.vertex_areas
    V = L.shape[0]
    lam = np.zeros(8)
    X = _block(V, 8, False)
    assert residual_norms.residual_sq(L, m, lam, np.asfortranarray(X)) is None   # F-order
    assert residual_norms.residual_sq(L.tocsc(), m, lam, X) is None               # not CSR
    assert residual_norms.residual_sq(L, m, lam, X.astype(complex)) is None       # dtypes
    assert residual_norms.residual_sq(L, m, lam[:1], X[:, :1]) is None            # too small
    assert residual_norms.residual_sq(L[:100, :100], m[:100], lam, X[:100]) is None


def test_mismatched_shapes_are_refused(sphere):
    """The kernels index mass and lam without bounds checks: a mismatch must not reach them."""
    L = sp.csr_matrix(mmp.connection_laplacian(sphere, 0))
    m = sphere.vertex_areas
    X = _block(L.shape[0], 8, False)
    with pytest.raises(ParameterError, match="lam"):
        residual_norms.residual_sq(L, m, np.zeros(3), X)
    with pytest.raises(ParameterError, match="mass"):
        residual_norms.residual_sq(L, m[:-1], np.zeros(8), X)
    with pytest.raises(ParameterError, match="X must be"):
        residual_norms.residual_sq(L, m, np.zeros(8), X[:-1])
    with pytest.raises(ParameterError, match="eigenvectors"):
        residuals(L, m, np.zeros(3), X)
    with pytest.raises(ParameterError, match="eigenvectors"):
        residuals(L, m[:-1], np.zeros(8), X)


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_rayleigh_quotients_match_the_formula(sphere, n, threads):
    # Re(x^H L x) / (x^H M x) per column, against the dense-free obvious formula
    L = sp.csr_matrix(mmp.connection_laplacian(sphere, n))
    m = sphere.vertex_areas
    X = _block(L.shape[0], 9, n != 0, seed=2)
    ref = (np.real(np.einsum("ij,ij->j", X.conj(), L @ X))
           / np.real(np.einsum("ij,ij,i->j", X.conj(), X, m)))
    out = residual_norms.rayleigh_quotients(L, m, X, threads=threads)
    assert out is not None
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def test_rayleigh_quotients_of_eigenvectors_are_the_eigenvalues(sphere):
    from manifoldmp.spectral.eigen import generalized_eigsh
    L = mmp.connection_laplacian(sphere, 1)
    res = generalized_eigsh(L, sphere.vertex_areas, 8, tol=1e-11)
    out = residual_norms.rayleigh_quotients(sp.csr_matrix(L), sphere.vertex_areas,
                                            np.ascontiguousarray(res.eigenvectors))
    np.testing.assert_allclose(out, res.eigenvalues, rtol=1e-12)
    # l(l+1) - 1 on the unit sphere (l = 1: 1, l = 2: 5), to discretization accuracy
    np.testing.assert_allclose(out, [1, 1, 1, 5, 5, 5, 5, 5], rtol=2e-3)


def test_rayleigh_quotients_not_usable_or_bad_input(sphere):
    L = sp.csr_matrix(mmp.connection_laplacian(sphere, 0))
    m = sphere.vertex_areas
    X = _block(L.shape[0], 8, False)
    assert residual_norms.rayleigh_quotients(L, m, np.asfortranarray(X)) is None
    assert residual_norms.rayleigh_quotients(L.tocsc(), m, X) is None
    assert residual_norms.rayleigh_quotients(L, m, X.astype(complex)) is None
    assert residual_norms.rayleigh_quotients(L, m, X[:, :1]) is None                 # small
    with pytest.raises(ParameterError, match="mass"):
        residual_norms.rayleigh_quotients(L, m[:-1], X)
    with pytest.raises(ParameterError, match="X"):
        residual_norms.rayleigh_quotients(L, m, X[:-1])
    X[:, 3] = 0.0
    with pytest.raises(ParameterError, match="column 3"):
        residual_norms.rayleigh_quotients(L, m, X)


def test_residuals_with_an_explicit_floor(sphere):
    # a subset of pairs measured against the floor of the whole set: the same numbers
    L = mmp.connection_laplacian(sphere, 0)
    m = sphere.vertex_areas
    X = _block(L.shape[0], 10, False, seed=3)
    lam = np.array([0.0, 1e-4, 2.0, 6.0, 12.0, 20.0, 30.0, 42.0, 56.0, 5000.0])
    whole = residuals(L, m, lam, X)
    floor = max(1e-3 * 5000.0, 4 * np.pi / m.sum())   # 5: above Weyl's 1 here
    part = residuals(L, m, lam[:3], np.ascontiguousarray(X[:, :3]), floor=floor)
    np.testing.assert_allclose(part, whole[:3], rtol=1e-13)
    assert not np.allclose(residuals(L, m, lam[:3], np.ascontiguousarray(X[:, :3])), part)
    with pytest.raises(ParameterError, match="floor"):
        residuals(L, m, lam, X, floor=0.0)
    with pytest.raises(ParameterError, match="floor must be a real number"):
        residuals(L, m, lam, X, floor="1")


@pytest.mark.parametrize("n", [0, 1])
def test_solver_rayleigh_quotients_same_with_and_without_the_kernel(sphere, n, monkeypatch):
    # the eigensolver's scipy fallback (L Phi and the column dot products) against the kernel
    from manifoldmp.spectral.eigen import _rayleigh_quotients
    L = sp.csr_matrix(mmp.connection_laplacian(sphere, n))
    m = sphere.vertex_areas
    X = _block(L.shape[0], 12, n != 0, seed=4)
    fast = _rayleigh_quotients(L, m, X)
    monkeypatch.setattr(residual_norms, "rayleigh_quotients", lambda *a, **kw: None)
    np.testing.assert_allclose(_rayleigh_quotients(L, m, X), fast, rtol=1e-13)
