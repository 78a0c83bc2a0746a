"""Chebyshev heat flow: coefficients, recurrence, a-priori bound, degree extension, errors."""

from __future__ import annotations

import numpy as np
import numpy.polynomial.chebyshev as npc
import pytest
import scipy.linalg as la
import scipy.sparse as sp
import torch

import manifoldmp as mmp
from manifoldmp.errors import ManifoldmpError, ParameterError
from manifoldmp.spectral.chebyshev import (
    ChebyshevNotConverged,
    chebyshev_coefficients,
    chebyshev_degree,
    chebyshev_expm,
    gershgorin_bound,
    heat_chebyshev,
    shifted_step,
    spectrum_bound,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


@pytest.fixture(scope="module")
def jittered() -> mmp.Surface:
    return mmp.meshes.jittered_sphere(2, amount=0.3)


def _dense_B(S, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(S.vertex_areas)
    s = 1.0 / np.sqrt(m)
    return (s[:, None] * mmp.connection_laplacian(S, n).toarray() * s[None, :]), m


@pytest.mark.parametrize("w", [0.0, 0.3, 5.0, 80.0, 900.0])
def test_coefficients_match_chebyshev_interpolation(w: float) -> None:
    # slow obvious reference: interpolate exp(-w (1 + s)) at Chebyshev points
    deg = 40 + int(3 * np.sqrt(w * 40))
    ref = npc.chebinterpolate(lambda s: np.exp(-w * (1.0 + s)), deg)
    coef, tail = chebyshev_coefficients(np.array([w]), deg)
    np.testing.assert_allclose(coef[:, 0], ref, rtol=0, atol=1e-13)  # interpolation rounding
    assert np.all(np.diff(tail[:, 0]) <= 0) and tail[-1, 0] < 1e-14
    # sum_k (-1)^k c_k = exp(0) = 1 and the tail is what the partial sums still miss
    full = np.abs(coef[:, 0]).sum() + tail[-1, 0]
    assert abs(full - 1.0) < 1e-13
    np.testing.assert_allclose(1.0 - np.cumsum(np.abs(coef[:, 0])), tail[:, 0], atol=1e-13)


def test_degree_is_the_first_meeting_the_bound() -> None:
    w = np.array([3.0, 250.0])
    for tol in (1e-4, 1e-8, 1e-12):
        m = chebyshev_degree(w, tol, max_degree=5000)
        _, tail = chebyshev_coefficients(w, m)
        assert np.all(2 * tail[m] <= tol) and not np.all(2 * tail[m - 1] <= tol)
    assert chebyshev_degree(w, 1e-12, max_degree=10) == 11   # over the limit


@pytest.mark.parametrize("n", [0, 1])
def test_recurrence_evaluates_the_stated_polynomial(jittered: mmp.Surface, n: int) -> None:
    # the fast recurrence against the polynomial evaluated on the dense eigendecomposition
    B, _ = _dense_B(jittered, n)
    b = float(np.linalg.eigvalsh(B)[-1]) * 1.01
    lam, U = np.linalg.eigh(B)
    S = torch.from_numpy((4.0 / b) * B - 2.0 * np.eye(len(B))).to_sparse_csr()
    rng = np.random.default_rng(3)
    z = rng.standard_normal((len(B), 3)) + (1j * rng.standard_normal((len(B), 3)) if n else 0)
    zt = torch.from_numpy(z)
    S = S.to(zt.dtype)
    t = np.array([2e-3, 0.05, 0.4])
    y, info = chebyshev_expm(shifted_step(S), zt, torch.from_numpy(t), b, tol=1e-12)
    s = 2.0 * lam / b - 1.0
    coef, tail = chebyshev_coefficients(0.5 * b * t, info.degree)
    for c in range(3):
        poly = npc.chebval(s, coef[:, c]) + tail[info.degree, c]   # p(0) = 1 correction
        ref = U @ (poly[:, None] * (U.conj().T @ z[:, c:c + 1]))
        np.testing.assert_allclose(y[:, c:c + 1].numpy(), ref, rtol=0, atol=1e-12)
        exact = U @ (np.exp(-t[c] * lam)[:, None] * (U.conj().T @ z[:, c:c + 1]))
        assert np.linalg.norm(y[:, c:c + 1].numpy() - exact) <= 1e-12 * np.linalg.norm(exact)
    # the out-of-place step (the CUDA path) gives the same result
    y2, _ = chebyshev_expm(lambda X, Y: torch.addmm(Y, S, X, beta=-1), zt, torch.from_numpy(t),
                           b, tol=1e-12)
    np.testing.assert_allclose(y2.numpy(), y.numpy(), rtol=0, atol=1e-14)
    assert torch.equal(zt, torch.from_numpy(z))   # the input is left unchanged


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_error_within_the_stated_bound(jittered: mmp.Surface, n: int, dtype: torch.dtype) -> None:
    m = np.asarray(jittered.vertex_areas)
    A = mmp.connection_laplacian(jittered, n).toarray() / m[:, None]
    rng = np.random.default_rng(n)
    x = rng.standard_normal((jittered.n_vertices, 2))
    x = x + 1j * rng.standard_normal(x.shape) if n else x
    for tol in ((1e-4, 1e-6) if dtype == torch.float32 else (1e-6, 1e-10, 1e-13)):
        H = mmp.HeatKernel(jittered, n, method="chebyshev", tol=tol, dtype=dtype)
        for t in (1e-4, 3e-3, 0.1, 2.0):
            ref = la.expm(-t * A) @ x
            y = H(torch.from_numpy(x), t).numpy()
            err = np.sqrt(np.sum(m[:, None] * np.abs(y - ref) ** 2, axis=0)
                          / np.sum(m[:, None] * np.abs(ref) ** 2, axis=0)).max()
            info = H.last_chebyshev
            assert err <= info.error_bound, (tol, t)
            if dtype == torch.float64 and tol >= 1e-10:   # 1e-13: below rounding when y << x
                assert info.error_bound <= tol, (tol, t)


def test_degree_grows_when_the_output_is_small(jittered: mmp.Surface) -> None:
    # a zero-mean input decays like exp(-t lambda_2): the tolerance relative to the output
    # needs more degrees than the a-priori one relative to the input
    m = np.asarray(jittered.vertex_areas)
    A = mmp.connection_laplacian(jittered, 0).toarray() / m[:, None]
    x = np.random.default_rng(0).standard_normal((jittered.n_vertices, 1))
    x -= (m @ x) / m.sum()
    t = 3.0
    H = mmp.HeatKernel(jittered, 0, method="chebyshev", tol=1e-8)
    y = H(torch.from_numpy(x), t).numpy()
    ref = la.expm(-t * A) @ x
    assert np.linalg.norm(ref) < 1e-3 * np.linalg.norm(x)
    assert H.last_chebyshev.degree > H.chebyshev_degree(t)
    assert np.linalg.norm(y - ref) <= 1e-8 * np.linalg.norm(ref) * 10  # Euclidean vs M-norm


def test_gershgorin_bound_is_rigorous_and_the_tighter_of_two() -> None:
    for S in (mmp.meshes.jittered_sphere(2, amount=0.4),
              mmp.PointCloud(mmp.meshes.random_sphere(300).vertices, n_neighbors=10)):
        for n in (0, 1):
            B, m = _dense_B(S, n)
            L = mmp.connection_laplacian(S, n)
            b = gershgorin_bound(L, m)
            assert np.linalg.eigvalsh(B)[-1] <= b * (1 + 1e-12)
            rows = np.max(np.asarray(abs(L).sum(axis=1)).ravel() / m)
            sym = np.max(np.abs(B).sum(axis=1))
            assert b == pytest.approx(min(rows, sym), rel=1e-13)


@pytest.mark.parametrize("domain", ["jittered", "cloud", "disk", "grid", "genus2"])
def test_spectrum_bound_is_rigorous_and_within_five_percent(domain: str) -> None:
    # dense eigvalsh as the oracle; the jittered sphere has negative cotan weights (an
    # indefinite L_0 would be bounded just the same), disk and grid have boundaries
    S = {"jittered": lambda: mmp.meshes.jittered_sphere(2, amount=0.4),
         "cloud": lambda: mmp.PointCloud(mmp.meshes.random_sphere(300).vertices, n_neighbors=10),
         "disk": lambda: mmp.meshes.disk(8),
         "grid": lambda: mmp.meshes.flat_grid(10, 7),
         "genus2": lambda: mmp.meshes.genus2(10)}[domain]()
    for n in (0, 1, 2):
        B, m = _dense_B(S, n)
        lam = np.linalg.eigvalsh(B)[-1]
        L = mmp.connection_laplacian(S, n)
        g, b = gershgorin_bound(L, m), spectrum_bound(L, m)
        assert lam <= b <= g * (1 + 1e-12)
        assert b <= 1.05 * lam < 0.95 * g          # Gershgorin: 13-26 % above lambda_max here
        assert b == mmp.HeatKernel(S, n).spectral_bound()
        assert spectrum_bound(L, m, iterations=0) == pytest.approx(g, rel=2e-12)


def test_spectrum_bound_on_matrices_that_are_not_meshes() -> None:
    rng = np.random.default_rng(3)
    V = 60
    # an indefinite complex Hermitian matrix with random masses
    A = sp.random(V, V, density=0.1, random_state=4) * (1 + 1j)
    A = (A + A.conj().T + sp.diags(rng.standard_normal(V))).tocsr()
    m = rng.uniform(0.1, 2.0, V)
    lam = np.linalg.eigvalsh(A.toarray() / np.sqrt(np.outer(m, m)))[-1]
    assert lam <= spectrum_bound(A, m) <= gershgorin_bound(A, m) * (1 + 1e-12)
    # an isolated vertex (a zero row) changes nothing; on this very regular mesh rho(|B|)
    # itself is 1.2 lambda_max (Gershgorin: 1.45)
    S = mmp.meshes.icosphere(2)
    L1 = mmp.connection_laplacian(S, 1)
    L = sp.block_diag([L1, sp.csr_matrix((1, 1))]).tocsr()
    m = np.append(S.vertex_areas, 0.3)
    lam = np.linalg.eigvalsh(L.toarray() / np.sqrt(np.outer(m, m)))[-1]
    b = spectrum_bound(L, m)
    assert b == spectrum_bound(L1, S.vertex_areas)
    assert lam <= b <= 1.25 * lam < gershgorin_bound(L, m)
    assert spectrum_bound(sp.csr_matrix((3, 3)), np.ones(3)) == 0.0
    with pytest.raises(ParameterError, match="iterations"):
        spectrum_bound(L, m, iterations=-1)
    for bad_m in (m[:-1], -m):
        with pytest.raises(ParameterError, match="mass"):
            spectrum_bound(L, bad_m)
    with pytest.raises(ParameterError, match=r"scipy\.sparse"):
        spectrum_bound(L.toarray(), m)
    bad = L.copy()
    bad.data[0] = np.nan
    with pytest.raises(ParameterError, match="non-finite"):
        spectrum_bound(bad, m)


def test_max_degree_and_errors(jittered: mmp.Surface) -> None:
    H = mmp.HeatKernel(jittered, 1, method="chebyshev", tol=1e-10)
    z = torch.ones(jittered.n_vertices, 1, dtype=torch.complex128)
    S = H._shifted(z.device, z.dtype)
    sq = torch.ones(jittered.n_vertices, dtype=torch.float64)
    with pytest.raises(ChebyshevNotConverged, match="max_degree=5") as exc:
        heat_chebyshev(S, H.spectral_bound(), sq, z, torch.tensor([1.0], dtype=torch.float64),
                       tol=1e-10, max_degree=5)
    assert isinstance(exc.value, (ManifoldmpError, ValueError))
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ManifoldmpError, match="t"):
            H.chebyshev_degree(bad)
    assert sp.issparse(H.laplacian)


def test_layer_bundle_uses_the_same_rigorous_bound(jittered: mmp.Surface) -> None:
    from manifoldmp import nn as mnn
    ops = mnn.precompute(jittered, max_type=2, k_eig=0)
    for n in (0, 1, 2):
        B, _ = _dense_B(jittered, n)
        b = ops.spectral_bound(n)
        assert np.linalg.eigvalsh(B)[-1] <= b * (1 + 1e-12)
        np.testing.assert_allclose(b, mmp.HeatKernel(jittered, n).spectral_bound(), rtol=1e-12)
        S = ops.shifted_laplacian(n).to_dense().numpy()
        ref = (4.0 / b) * B - 2.0 * np.eye(len(B))
        if n:   # the stacked real form of the complex operator
            ref = np.block([[ref.real, -ref.imag], [ref.imag, ref.real]])
        np.testing.assert_allclose(S, ref, atol=1e-12)
        assert not ops.shifted_laplacian(n).is_complex()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_operator_forms_agree(jittered: mmp.Surface, dtype: torch.dtype) -> None:
    # complex (V, V), stacked real (2V, 2V) and, for n = 0, the real operator on interleaved
    # real and imaginary parts: one flow, checked against dense expm
    from manifoldmp.operators.sparse import complex_dtype
    m = np.asarray(jittered.vertex_areas)
    sq = torch.from_numpy(np.sqrt(m)).to(dtype)
    cdt = complex_dtype(dtype)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((len(m), 3)) + 1j * rng.standard_normal((len(m), 3))
    t = torch.tensor([1e-3, 2e-2, 0.0], dtype=dtype)
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    for n in (0, 1):
        B, _ = _dense_B(jittered, n)
        b = gershgorin_bound(mmp.connection_laplacian(jittered, n), m)
        Sd = (4.0 / b) * B - 2.0 * np.eye(len(m))
        forms = {"complex": torch.from_numpy(Sd.astype(complex)).to_sparse_csr().to(cdt),
                 "stacked": torch.from_numpy(np.block([[Sd.real, -Sd.imag], [Sd.imag, Sd.real]])
                                             ).to_sparse_csr().to(dtype)}
        if n == 0:
            forms["real"] = torch.from_numpy(Sd.real.copy()).to_sparse_csr().to(dtype)
        A = mmp.connection_laplacian(jittered, n).toarray() / m[:, None]
        for c in range(3):
            ref = la.expm(-float(t[c]) * A) @ x[:, c]
            for name, S in forms.items():
                y, _ = heat_chebyshev(S, b, sq, torch.from_numpy(x).to(cdt), t, tol=1e-11)
                assert y.dtype == cdt
                err = np.linalg.norm(y[:, c].numpy() - ref) / np.linalg.norm(ref)
                assert err < rtol, (n, name, c)
            if n == 0:   # real features through the stacked and real forms
                for name in ("stacked", "real"):
                    yr, _ = heat_chebyshev(forms[name], b, sq, torch.from_numpy(x.real).to(dtype),
                                           t, tol=1e-11)
                    assert yr.dtype == dtype
                    err = np.linalg.norm(yr[:, c].numpy() - ref.real) / np.linalg.norm(ref.real)
                    assert err < rtol, (name, c)


def test_public_functions_reject_bad_input(jittered: mmp.Surface) -> None:
    from manifoldmp.errors import ParameterError
    L = mmp.connection_laplacian(jittered, 0)
    m = np.asarray(jittered.vertex_areas)
    z = torch.ones(len(m), 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.2], dtype=torch.float64)
    step = shifted_step(torch.eye(len(m), dtype=torch.float64).to_sparse_csr())
    bad = [
        (lambda: chebyshev_expm(step, z, t, 0.0), "bound"),
        (lambda: chebyshev_expm(step, z, t, float("nan")), "bound"),
        (lambda: chebyshev_expm(step, z, t, 1.0, tol=-1.0), "tol"),
        (lambda: chebyshev_expm(step, z, t, 1.0, max_degree=2.5), "max_degree"),
        (lambda: chebyshev_expm(step, z, t[:1], 1.0), "one time per column"),
        (lambda: chebyshev_expm(step, z, -t, 1.0), ">= 0"),
        (lambda: chebyshev_expm(step, z[:, 0], t, 1.0), "z must be"),
        (lambda: chebyshev_coefficients(np.array([np.inf]), 3), ">= 0"),
        (lambda: chebyshev_coefficients(np.array([1.0]), -1), "degree"),
        (lambda: chebyshev_degree(np.array([-1.0]), 1e-6, max_degree=10), ">= 0"),
        (lambda: gershgorin_bound(L, m[:-1]), "mass"),
        (lambda: gershgorin_bound(L, -m), "mass"),
        (lambda: gershgorin_bound(L.toarray(), m), "scipy.sparse"),
    ]
    for call, match in bad:
        with pytest.raises(ParameterError, match=match):
            call()


def test_float32_flow_goes_to_float64_when_its_rounding_floor_cannot_reach_tol(
        jittered: mmp.Surface, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long time (degree > 21, 4 m eps32 > 1e-5) runs the float64 recurrence only, with no
    float32 run to throw away; a short one stays in float32."""
    import logging

    from manifoldmp.spectral import chebyshev as cheb

    m = np.asarray(jittered.vertex_areas)
    A = mmp.connection_laplacian(jittered, 1).toarray() / m[:, None]
    x = np.random.default_rng(3).standard_normal((jittered.n_vertices, 2)) * (1 + 1j)
    H = mmp.HeatKernel(jittered, 1, method="chebyshev", tol=1e-6, dtype=torch.float32)
    calls: list[torch.dtype] = []
    real_run = cheb._run

    def spy(S, bound, sqrt_mass, xx, *args):  # type: ignore[no-untyped-def]
        calls.append(xx.dtype)
        return real_run(S, bound, sqrt_mass, xx, *args)

    monkeypatch.setattr(cheb, "_run", spy)
    for t, runs in ((0.3, [torch.complex128]), (1e-4, [torch.complex64])):
        calls.clear()
        with caplog.at_level(logging.DEBUG, logger="manifoldmp.spectral.chebyshev"):
            y = H(torch.from_numpy(x).to(torch.complex64), t)
        assert calls == runs and y.dtype == torch.complex64, t
        ref = la.expm(-t * A) @ x
        assert np.abs(y.numpy() - ref).max() <= 1e-5 * np.abs(ref).max(), t
    assert "float32 rounding floor alone exceeds" in caplog.text


def test_coefficients_are_computed_once_per_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same times (a backward pass, a float64 redo) reuse the coefficients, read-only."""
    from manifoldmp.spectral import chebyshev as cheb

    monkeypatch.setattr(cheb, "_COEF_CACHE", {})
    w = np.array([0.3, 40.0, 900.0])
    calls = []
    real = cheb.chebyshev_coefficients
    monkeypatch.setattr(cheb, "chebyshev_coefficients",
                        lambda w, n: calls.append(n) or real(w, n))
    coef, tail = cheb._all_coefficients(w, 20000)
    again = cheb._all_coefficients(w.copy(), 20000)
    assert len(calls) == 1 and again[0] is coef and again[1] is tail
    ref_c, ref_t = real(w, coef.shape[0] - 1)
    assert np.array_equal(coef, ref_c) and np.array_equal(tail, ref_t)
    assert not coef.flags.writeable and not tail.flags.writeable
    cheb._all_coefficients(w, 50)                     # another max_degree: another entry
    cheb._all_coefficients(np.array([0.3, 40.0]), 20000)
    assert len(calls) == 3
    for k in range(cheb._COEF_CACHE_SIZE + 2):        # bounded
        cheb._all_coefficients(np.array([float(k + 1)]), 100)
    assert len(cheb._COEF_CACHE) == cheb._COEF_CACHE_SIZE


def test_a_flow_far_below_its_input_warns_when_the_bound_misses_tol(
        caplog: pytest.LogCaptureFixture) -> None:
    """Rounding is relative to the input: at n = 1, t = 30 the output is e^-30 of it and the
    explicit Chebyshev method cannot meet tol (it came back 600 times off with only an
    information message). The bound says so (infinite: no digit guaranteed), a warning names
    the methods that reach it, and Lanczos does."""
    import logging

    S = mmp.meshes.icosphere(3)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((S.n_vertices, 2)) + 0j)
    ref = mmp.HeatKernel(S, 1, method="spectral", k=S.n_vertices)(x, 30.0)
    H = mmp.HeatKernel(S, 1, method="chebyshev", tol=1e-8)
    with caplog.at_level(logging.WARNING, logger="manifoldmp.spectral.chebyshev"):
        y = H(x, 30.0)
    err = float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref))
    assert err > 1e-8 and H.last_chebyshev.error_bound >= err
    assert "misses tol" in caplog.text and "'krylov'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="manifoldmp.spectral.chebyshev"):
        y = H(x, 1e-3)                  # a flow that meets tol says nothing
    assert caplog.text == ""
    K = mmp.HeatKernel(S, 1, method="krylov", tol=1e-8)
    assert float(torch.linalg.vector_norm(K(x, 30.0) - ref)
                 / torch.linalg.vector_norm(ref)) < 1e-7
