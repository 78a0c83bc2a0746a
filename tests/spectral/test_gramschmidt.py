"""The fused Gram-Schmidt kernels against numpy's products, and their use in the eigensolver."""

import numpy as np
import pytest

from manifoldmp.errors import ParameterError
from manifoldmp.spectral import gramschmidt
from manifoldmp.spectral.eigen import _orthonormalize, _project_out
from manifoldmp.spectral.fused import fused_available

pytestmark = pytest.mark.skipif(not fused_available(), reason="numba is not installed")


def _blocks(V, n, b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((V, n))
    W = rng.standard_normal((V, b))
    if dtype == np.complex128:
        Q = Q + 1j * rng.standard_normal((V, n))
        W = W + 1j * rng.standard_normal((V, b))
    return np.asfortranarray(Q), np.asfortranarray(W)


# shapes with and without remainders of the 4 x 4 register blocks; row counts that leave
# partial sub-blocks and uneven thread ranges
SHAPES = [(5000, 8, 8), (9001, 13, 3), (4097, 7, 5), (70001, 17, 1), (3, 4, 4)]


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_coefficients_match_numpy(dtype, shape, threads):
    Q, W = _blocks(*shape, dtype)
    C = gramschmidt.coefficients(Q, W, threads=threads)
    ref = Q.conj().T @ W
    assert C.dtype == ref.dtype and C.shape == ref.shape
    # each entry is a sum of V products of unit-size numbers: rounding ~ eps sqrt(V)
    np.testing.assert_allclose(C, ref, rtol=0, atol=1e-13 * np.sqrt(shape[0]) * 4)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_subtract_product_matches_numpy(dtype, shape, threads):
    Q, W = _blocks(*shape, dtype)
    rng = np.random.default_rng(1)
    C = rng.standard_normal((shape[1], shape[2]))
    if dtype == np.complex128:
        C = C + 1j * rng.standard_normal(C.shape)
    ref = W - Q @ C
    gramschmidt.subtract_product(Q, C, W, threads=threads)
    np.testing.assert_allclose(W, ref, rtol=0, atol=1e-13 * shape[1])


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_project_out_orthogonalizes(dtype):
    V, n, b = 40_000, 40, 8
    Q, W = _blocks(V, n, b, dtype)
    Q, _ = np.linalg.qr(Q)
    Q = np.asfortranarray(Q)
    W0 = W.copy()
    assert gramschmidt.usable(Q, W)
    out = gramschmidt.project_out(W, Q)
    assert out is not None
    Wo, C = out
    assert Wo is W   # in place
    np.testing.assert_allclose(C, Q.conj().T @ W0, atol=1e-11)
    np.testing.assert_allclose(Wo, W0 - Q @ C, atol=1e-12)
    assert np.abs(Q.conj().T @ Wo).max() < 1e-12 * np.abs(W0).max() * np.sqrt(V)
    # the eigensolver's entry point takes the kernels and gives the same result
    Wb = W0.copy(order="F")
    W2, C2 = _project_out(Wb, Q)
    np.testing.assert_allclose(C2, C, atol=1e-12)
    np.testing.assert_allclose(W2, Wo, atol=1e-12)


def test_orthonormalize_takes_c_ordered_blocks():
    """A C-ordered block (what the solves return) is copied once and goes through the kernels."""
    V, n, b = 40_000, 40, 8
    Q, W = _blocks(V, n, b, np.float64, seed=3)
    Q = np.asfortranarray(np.linalg.qr(Q)[0])
    Wc = np.ascontiguousarray(W)
    Wo, C, R = _orthonormalize(Wc, Q, np.random.default_rng(0), local=n - 16)
    assert Wo.flags.f_contiguous
    np.testing.assert_allclose(Q @ C + Wo @ R, W, atol=1e-11)
    np.testing.assert_allclose(Wo.T @ Wo, np.eye(b), atol=1e-13)
    assert np.abs(Q.T @ Wo).max() < 1e-13


def test_not_usable_falls_back():
    Q, W = _blocks(100, 4, 2, np.float64)
    assert not gramschmidt.usable(Q, W)           # too small: torch's products
    assert gramschmidt.project_out(W, Q) is None
    Q, W = _blocks(40_000, 40, 8, np.float64)
    assert not gramschmidt.usable(np.ascontiguousarray(Q), W)
    assert not gramschmidt.usable(Q, np.ascontiguousarray(W))
    assert not gramschmidt.usable(Q, W.astype(np.complex128, order="F"))
    assert not gramschmidt.usable(Q.astype(np.float32, order="F"), W.astype(np.float32,
                                                                            order="F"))
    assert not gramschmidt.usable(Q[:, 0], W)     # not 2-D: no IndexError either


def test_bad_input():
    Q, W = _blocks(500, 4, 2, np.float64)
    with pytest.raises(ParameterError, match="Fortran"):
        gramschmidt.coefficients(np.ascontiguousarray(Q), W)
    with pytest.raises(ParameterError, match="share V"):
        gramschmidt.coefficients(Q, W[:400])
    with pytest.raises(ParameterError, match="float64 or complex128"):
        gramschmidt.coefficients(Q.astype(np.float32, order="F"), W.astype(np.float32,
                                                                           order="F"))
    with pytest.raises(ParameterError, match="C must have shape"):
        gramschmidt.subtract_product(Q, np.zeros((3, 2)), W)
    with pytest.raises(ParameterError, match="real C"):
        gramschmidt.subtract_product(Q, np.zeros((4, 2), complex), W)


@pytest.mark.parametrize("n", [0, 1])
def test_eigensolver_with_and_without_the_kernels(n, monkeypatch):
    """The solver's results with the kernels equal those through torch's products."""
    import manifoldmp as mmp
    from manifoldmp.spectral.eigen import generalized_eigsh

    S = mmp.meshes.icosphere(5)   # 10242 vertices: a 160-column basis is above MIN_SIZE
    L = mmp.connection_laplacian(S, n)
    calls = []
    real_project_out = gramschmidt.project_out

    def counting(W, Q):
        out = real_project_out(W, Q)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(gramschmidt, "project_out", counting)
    fast = generalized_eigsh(L, S.vertex_areas, 16, tol=1e-10)
    assert sum(calls) > 10
    assert getattr(gramschmidt._SCRATCH, "buf", None) is None   # released on return
    monkeypatch.setattr(gramschmidt, "project_out", lambda W, Q: None)
    slow = generalized_eigsh(L, S.vertex_areas, 16, tol=1e-10)
    assert fast.residuals.max() <= 1e-10 and slow.residuals.max() <= 1e-10
    lam = slow.eigenvalues
    np.testing.assert_allclose(fast.eigenvalues, lam, rtol=1e-11, atol=1e-12)
    # same eigenspaces (degenerate on the sphere: compare subspaces through M, up to the last
    # gap, since k may cut a cluster)
    m = int(np.flatnonzero(np.diff(lam) > 1e-6 * lam[-1])[-1]) + 1
    P = fast.eigenvectors[:, :m].conj().T @ (S.vertex_areas[:, None] * slow.eigenvectors[:, :m])
    np.testing.assert_allclose(np.linalg.svd(P, compute_uv=False), 1.0, atol=1e-8)
