"""Fused CPU kernels (Chebyshev and Lanczos) against the plain loops and the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as la
import scipy.sparse as sp
import torch

import manifoldmp as mmp
from manifoldmp.errors import ParameterError
from manifoldmp.spectral.chebyshev import chebyshev_expm_fused, heat_chebyshev
from manifoldmp.spectral.fused import FusedOperator, FusedRecurrence, fused_available

pytestmark = [pytest.mark.skipif(not fused_available(), reason="numba is not installed"),
              pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")]


def _scrambled_operator(n: int, seed: int = 0) -> sp.csr_matrix:
    """A shifted mesh operator in a random vertex order (so the reordering has work to do)."""
    S = mmp.meshes.icosphere(3)
    L = mmp.connection_laplacian(S, n).tocsr()
    m = S.vertex_areas
    q = np.random.default_rng(seed).permutation(S.n_vertices)
    s = 1.0 / np.sqrt(m)
    B = (sp.diags(s) @ L @ sp.diags(s)).tocsr()
    b = float(abs(B).sum(axis=1).max())
    return ((4.0 / b) * B - 2.0 * sp.identity(S.n_vertices)).tocsr()[q][:, q].tocsr()


def _reference(S: sp.spmatrix, x: np.ndarray, s: np.ndarray, coef: np.ndarray, degree: int,
               tail: np.ndarray) -> np.ndarray:
    """The slow obvious recurrence: ``sum_k c_k y_k / s + tail x``."""
    z = s[:, None] * x
    ys = [z, 0.5 * (S @ z)]
    for _ in range(2, degree + 1):
        ys.append(S @ ys[-1] - ys[-2])
    return sum(coef[k] * ys[k] for k in range(degree + 1)) / s[:, None] + tail * x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["real", "real-op-complex-x", "complex"])
def test_recurrence_matches_the_plain_one(case: str, dtype: type) -> None:
    S = _scrambled_operator(1 if case == "complex" else 0)
    V = S.shape[0]
    rng = np.random.default_rng(1)
    C = 70   # three column blocks (32 + 32 + 6 complex, or 64 + 6 real for float64)
    x = rng.standard_normal((V, C))
    if case != "real":
        x = x + 1j * rng.standard_normal((V, C))
    cdt = np.dtype(dtype) if case == "real" else np.result_type(dtype, np.complex64)
    s = rng.uniform(0.5, 2.0, V)
    coef = rng.standard_normal((10, C))
    tail = rng.standard_normal(C)
    rtol = 1e-13 if dtype == np.float64 else 2e-5
    for min_chunk, threads in ((1, 1), (1, 2), (1, 3), (8, 2), (256, 2)):
        op = FusedOperator.from_scipy(S, dtype)
        op.min_chunk = min_chunk
        if min_chunk == 1:   # several ranges, each of several chunks of the bandwidth
            assert len(op._bounds(threads)) - 1 == threads and op.chunk == op.bandwidth
        for degrees in ((0,), (1,), (2,), (5,), (0, 3), (0, 1, 2), (2, 7), (3, 4, 9)):
            R = FusedRecurrence(op, x.astype(cdt), s, threads=threads)
            for d in degrees:   # continuing the recurrence, as the output-relative rule does
                R.advance(d, coef)
            ref = _reference(S, x.astype(cdt).astype(np.complex128 if case != "real"
                                                     else np.float64), s, coef, degrees[-1],
                             tail)
            out = R.result(tail)
            assert out.dtype == cdt
            err = np.abs(out - ref).max() / np.abs(ref).max()
            assert err < rtol, (min_chunk, threads, degrees, err)
    # the norms the degree rule uses
    R = FusedRecurrence(op, x.astype(cdt), s)
    np.testing.assert_allclose(R.input_norms(), np.linalg.norm(s[:, None] * x, axis=0),
                               rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["real", "complex"])
def test_row_product_tiles_on_every_width(case: str, dtype: type) -> None:
    # every width of a column block, so that every tile of the row product runs (wide tiles,
    # single vectors of 64 to 4 bytes, and their mixtures), against the plain recurrence
    S = _scrambled_operator(1 if case == "complex" else 0, seed=2)
    V = S.shape[0]
    rng = np.random.default_rng(3)
    per_block = 512 // np.dtype(dtype).itemsize // (2 if case == "complex" else 1)
    cdt = np.dtype(dtype) if case == "real" else np.result_type(dtype, np.complex64)
    s = rng.uniform(0.5, 2.0, V)
    rtol = 1e-13 if dtype == np.float64 else 2e-5
    op = FusedOperator.from_scipy(S, dtype)
    for C in range(1, per_block + 3):
        x = rng.standard_normal((V, C))
        if case == "complex":
            x = x + 1j * rng.standard_normal((V, C))
        coef = rng.standard_normal((4, C))
        R = FusedRecurrence(op, x.astype(cdt), s)
        R.advance(3, coef)
        out = R.result(np.zeros(C))
        ref = _reference(S, x.astype(cdt).astype(np.complex128 if case == "complex"
                                                  else np.float64), s, coef, 3, np.zeros(C))
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < rtol, (C, err)


def test_reordering_is_a_bandwidth_reducing_permutation() -> None:
    S = _scrambled_operator(1, seed=4)
    op = FusedOperator.from_scipy(S)
    assert np.array_equal(np.sort(op.perm), np.arange(S.shape[0]))
    P = sp.csr_matrix(S)[op.perm][:, op.perm].tocoo()
    assert op.bandwidth == int(np.abs(P.row - P.col).max())
    Sc = S.tocoo()
    assert op.bandwidth < 0.25 * np.abs(Sc.row - Sc.col).max()   # the scrambled order: ~V
    A = sp.csr_matrix((op.data_real + 1j * op.data_imag, op.indices, op.indptr),
                      shape=S.shape)
    assert abs(A - P.tocsr()).max() == 0


@pytest.mark.parametrize("method", ["chebyshev", "krylov"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_heat_kernel_fused_equals_torch_path_and_expm(n: int, dtype: torch.dtype,
                                                      method: str) -> None:
    S = mmp.meshes.jittered_sphere(2, amount=0.3)
    tol = 1e-10 if dtype == torch.float64 else (1e-3 if method == "chebyshev" else 1e-4)
    H = mmp.HeatKernel(S, n, method=method, tol=tol, dtype=dtype)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(S.n_vertices, 40, dtype=dtype, generator=g)
    if n:
        x = torch.complex(x, torch.randn(x.shape, dtype=dtype, generator=g))
    t = torch.logspace(-4, 0.5, 40, dtype=torch.float64)
    y = H(x, t)
    assert H._fused(x) is not None
    # narrow inputs go to torch's product: below 128 bytes per row real, 32 complex
    assert (H._fused(x[:, :2]) is not None) == (n != 0 and 2 * x.element_size() >= 32)
    assert H._fused(x[:, :1]) is None
    if method == "chebyshev":
        # float32 at t = 3 is below its rounding floor: redone in float64, fused as well
        assert np.float64 in H._fused_S
        steps = H.last_chebyshev.degree
    else:   # always two passes, the second one step short
        assert H.last_krylov.products == 2 * H.last_krylov.steps - 1
        steps = H.last_krylov.steps
    H.FUSED = False
    y_ref = H(x, t)
    assert H._fused(x) is None
    assert steps == (H.last_chebyshev.degree if method == "chebyshev" else H.last_krylov.steps)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert y.dtype == x.dtype
    assert (y - y_ref).abs().max() <= rtol * y_ref.abs().max()
    m = S.vertex_areas
    A = mmp.connection_laplacian(S, n).toarray() / m[:, None]
    xd = x.numpy().astype(np.complex128 if n else np.float64)
    ref = np.stack([la.expm(-float(tc) * A) @ xd[:, c] for c, tc in enumerate(t)], axis=1)
    r = np.sqrt(m)[:, None]
    err = np.linalg.norm(r * (y.numpy() - ref), axis=0) / np.linalg.norm(r * ref, axis=0)
    assert err.max() < (1e-8 if dtype == torch.float64 else 1e-3 if method == "chebyshev"
                        else 1e-4)


def test_heat_chebyshev_takes_the_fused_operator() -> None:
    S = mmp.meshes.icosphere(2)
    H = mmp.HeatKernel(S, 1, method="chebyshev", tol=1e-11)
    x = torch.randn(S.n_vertices, 3, dtype=torch.complex128)
    t = torch.tensor([1e-3, 1e-2, 0.3], dtype=torch.float64)
    sq = torch.from_numpy(np.sqrt(H.mass))
    op = FusedOperator.from_scipy(H._shifted_scipy())
    y, info = heat_chebyshev(None, H.spectral_bound(), sq, x, t, tol=1e-11, fused=op)
    y2, info2 = heat_chebyshev(H._shifted(x.device, x.dtype), H.spectral_bound(), sq, x, t,
                               tol=1e-11)
    assert info.degree == info2.degree and abs(info.error_bound - info2.error_bound) < 1e-15
    assert (y - y2).abs().max() < 1e-13 * y2.abs().max()


def test_bad_input_is_refused() -> None:
    S = _scrambled_operator(1)
    op = FusedOperator.from_scipy(S)
    V = S.shape[0]
    s = np.ones(V)
    x = np.ones((V, 2), dtype=complex)
    bad = [
        (lambda: FusedOperator.from_scipy(S, np.int32), "float32 or float64"),
        (lambda: FusedOperator.from_scipy(sp.csr_matrix(np.ones((3, 4)))), "square"),
        (lambda: FusedRecurrence(op, np.ones((V, 2)), s), "complex x"),
        (lambda: FusedRecurrence(op, x[:-1], s), "shape"),
        (lambda: FusedRecurrence(op, x.astype(np.complex64), s), "dtype"),
        (lambda: FusedRecurrence(op, x, s[:-1]), "scale"),
        (lambda: FusedRecurrence(op, x, -s), "scale"),
        (lambda: FusedRecurrence(op, x, np.full(V, np.nan)), "scale"),
        (lambda: FusedOperator.from_scipy(S * np.nan), "non-finite"),
        (lambda: chebyshev_expm_fused(op, x, s, np.ones(3), 1.0), "one time per column"),
        (lambda: chebyshev_expm_fused(op, x, s, np.ones(2), -1.0), "bound"),
        (lambda: chebyshev_expm_fused(op, x, s, -np.ones(2), 1.0), ">= 0"),
        (lambda: chebyshev_expm_fused(op, x * np.nan, s, np.ones(2), 1.0), "non-finite"),
    ]
    for call, match in bad:
        with pytest.raises(ParameterError, match=match):
            call()


def _forked_flow(H: mmp.HeatKernel, x: torch.Tensor, t: torch.Tensor, queue: object) -> None:
    torch.set_num_threads(1)   # what a DataLoader worker does
    y = H(x, t)
    queue.put((H._fused(x) is None, y.numpy()))  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(__import__("os"), "register_at_fork"), reason="needs fork")
@pytest.mark.parametrize("parent_used_fused", [True, False])
def test_a_forked_child_takes_the_torch_path(parent_used_fused: bool) -> None:
    """numba's OpenMP layer is not fork-safe: a DataLoader-style worker forked after the
    parent ran the kernels was killed ("fork() called from a process already using GNU
    OpenMP"), and one forked after the parent ran only torch's OpenMP hung in them; it now
    runs torch's product and gets the same flow."""
    import multiprocessing as mp
    import time
    from queue import Empty

    from manifoldmp.spectral import fused as fused_mod

    S = mmp.meshes.icosphere(3)
    H = mmp.HeatKernel(S, 1, method="chebyshev", tol=1e-10)
    x = torch.randn(S.n_vertices, 32, dtype=torch.complex128,
                    generator=torch.Generator().manual_seed(5))
    t = torch.logspace(-3, -1, 32, dtype=torch.float64)
    H.FUSED = parent_used_fused
    y = H(x, t)
    torch.isfinite(torch.ones(2_000_000, 4)).all()   # an OpenMP region of torch's own
    H.FUSED = True
    assert H._fused(x) is not None and not fused_mod._STATE["forked"]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_flow, args=(H, x, t, queue))
    child.start()
    deadline = time.monotonic() + 120
    while True:   # read before joining: the child exits only once its result is consumed
        try:
            torch_path, y_child = queue.get(timeout=1)
            break
        except Empty:   # pragma: no cover - the failure this test guards against
            if not child.is_alive() or time.monotonic() > deadline:
                child.kill()
                pytest.fail(f"the forked child died or hung (exit code {child.exitcode})")
    child.join(30)
    assert child.exitcode == 0
    assert torch_path
    assert np.abs(y_child - y.numpy()).max() <= 1e-12 * np.abs(y.numpy()).max()
    assert fused_available()   # the parent itself is unaffected


def test_kernels_refuse_to_run_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from manifoldmp.spectral import fused as fused_mod

    S = _scrambled_operator(0)
    op = FusedOperator.from_scipy(S)
    monkeypatch.setitem(fused_mod._STATE, "forked", True)
    assert not fused_available()
    with pytest.raises(fused_mod.FusedUnavailable, match="forked child"):
        FusedRecurrence(op, np.ones((S.shape[0], 2)), np.ones(S.shape[0]))
    H = mmp.HeatKernel(mmp.meshes.icosphere(2), 0, method="chebyshev", tol=1e-8)
    assert H._fused(torch.ones(H.n_vertices, 64, dtype=torch.float64)) is None


def test_first_use_per_precision_is_logged(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The first use may compile for seconds: said once per precision, through logging."""
    import logging

    from manifoldmp.spectral import fused as fused_mod

    monkeypatch.setattr(fused_mod, "_LOADED", set())
    S = _scrambled_operator(0)
    with caplog.at_level(logging.INFO, logger="manifoldmp.spectral.fused"):
        for dtype in (np.float64, np.float64, np.float32):
            op = FusedOperator.from_scipy(S, dtype)
            FusedRecurrence(op, np.ones((S.shape[0], 2), dtype=dtype), np.ones(S.shape[0]))
    firsts = [r.getMessage() for r in caplog.records if "first use" in r.getMessage()]
    assert len(firsts) == 2 and "float64" in firsts[0] and "float32" in firsts[1]


# ---------------------------------------------------------------- Lanczos on the fused kernels


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["real", "complex"])
def test_general_recurrence_matches_the_plain_one(case: str, dtype: type) -> None:
    """``y_k = u_k S y_{k-1} + v_k y_{k-1} + w_k y_{k-2}`` with per-column coefficients (the
    Lanczos second pass) against the slow obvious loop, through every path of ``advance``."""
    S = _scrambled_operator(1 if case == "complex" else 0, seed=2)
    V = S.shape[0]
    rng = np.random.default_rng(3)
    C = 70
    x = rng.standard_normal((V, C))
    if case == "complex":
        x = x + 1j * rng.standard_normal((V, C))
    cdt = np.dtype(dtype) if case == "real" else np.result_type(dtype, np.complex64)
    s = rng.uniform(0.5, 2.0, V)
    coef, u, v, w = (rng.uniform(-1.0, 1.0, (10, C)) for _ in range(4))
    z = s[:, None] * x.astype(cdt).astype(np.complex128 if case == "complex" else np.float64)
    ys = [z, u[1] * (S @ z) + v[1] * z]
    for k in range(2, 10):
        ys.append(u[k] * (S @ ys[-1]) + v[k] * ys[-1] + w[k] * ys[-2])
    rtol = 1e-13 if dtype == np.float64 else 2e-5
    for min_chunk, threads in ((1, 1), (1, 3), (256, 2)):
        op = FusedOperator.from_scipy(S, dtype)
        op.min_chunk = min_chunk
        for degrees in ((1,), (2,), (5,), (0, 3), (2, 7), (3, 4, 9)):
            R = FusedRecurrence(op, x.astype(cdt), s, threads=threads)
            for d in degrees:
                R.advance(d, coef, (u, v, w))
            ref = sum(coef[k] * ys[k] for k in range(degrees[-1] + 1)) / s[:, None]
            out = R.result(np.zeros(C))
            err = np.abs(out - ref).max() / np.abs(ref).max()
            assert err < rtol, (min_chunk, threads, degrees, err)


def _plain_lanczos(S: sp.spmatrix, z: np.ndarray, steps: int
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Column-wise Lanczos on ``S``, the slow obvious way (a zero residual stays zero)."""
    nz = np.linalg.norm(z, axis=0)
    q = z / np.where(nz > 0, nz, 1.0)
    qs, alphas, betas = [q], [], []
    prev, bprev = np.zeros_like(q), np.zeros(z.shape[1])
    for _ in range(steps):
        w = S @ q
        a = np.real(np.sum(q.conj() * w, axis=0))
        w = w - a * q - bprev * prev
        b = np.linalg.norm(w, axis=0)
        alphas.append(a)
        betas.append(b)
        prev, q, bprev = q, w / np.where(b > 0, b, 1.0), b
        qs.append(q)
    return np.array(alphas), np.array(betas), qs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["real", "real-op-complex-x", "complex"])
def test_lanczos_steps_and_sum_match_the_plain_lanczos(case: str, dtype: type) -> None:
    """Coefficients of the two-pass kernels and the regenerated sum, against the plain loop;
    with a zero column and a column that breaks down at the first step (an eigenvector)."""
    from manifoldmp.spectral.fused import FusedLanczos

    S = _scrambled_operator(1 if case == "complex" else 0, seed=6)
    V = S.shape[0]
    rng = np.random.default_rng(7)
    C = 70
    s = rng.uniform(0.5, 2.0, V)
    x = rng.standard_normal((V, C))
    if case != "real":
        x = x + 1j * rng.standard_normal((V, C))
    x[:, 0] = 0.0
    _, U = np.linalg.eigh(S.toarray())
    x[:, 1] = U[:, 5] / s           # z = s x is an eigenvector of S: beta_1 = 0
    cdt = np.dtype(dtype) if case == "real" else np.result_type(dtype, np.complex64)
    xin = x.astype(cdt)
    z = s[:, None] * xin.astype(np.complex128 if case != "real" else np.float64)
    m = 9
    A_ref, B_ref, qs = _plain_lanczos(S, z, m)
    coef = rng.uniform(-1.0, 1.0, (m, C))
    # after the breakdown (beta_1 at rounding level) the column's later vectors are rounding
    # noise divided by beta_1, different in any two implementations; T decouples there and
    # exp(-t T) e_1 gives them weights of the order of beta_1
    coef[1:, 1] = 0.0
    A_ref[1:, 1] = B_ref[1:, 1] = 0.0
    nz = np.linalg.norm(z, axis=0)
    ref = sum(coef[j] * nz * qs[j] for j in range(m)) / s[:, None]
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    for min_chunk, threads in ((1, 1), (1, 3), (256, 2)):
        op = FusedOperator.from_scipy(S, dtype)
        op.min_chunk = min_chunk
        eng = FusedLanczos(op, xin, s, threads=threads)
        steps = [eng.step() for _ in range(m)]
        A = np.array([a for a, _ in steps])
        B = np.array([b for _, b in steps])
        assert B[0, 1] < 10 * rtol                                       # the breakdown
        A[1:, 1] = B[1:, 1] = 0.0
        assert np.abs(A - A_ref).max() < rtol * np.abs(A_ref).max()
        assert np.abs(B - B_ref).max() < rtol * np.abs(B_ref).max()
        assert np.all(A[:, 0] == 0) and np.all(B[:, 0] == 0)          # the zero column
        with pytest.raises(ParameterError, match="betas"):
            eng.combine(A, B, coef)
        out = eng.combine(A, B[: m - 1], coef)
        with pytest.raises(ParameterError, match="combined"):
            eng.step()                 # the second pass overwrote the input block
        assert out.dtype == cdt
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < (1e-12 if dtype == np.float64 else 1e-4), (min_chunk, threads, err)


def test_float32_lanczos_redo_runs_fused_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """At long times the float32 output is small against the input and loses digits: the flow
    is redone in float64, on the fused kernels as well, and meets the tolerance."""
    from manifoldmp.spectral import krylov as K

    S = mmp.meshes.icosphere(3)
    H = mmp.HeatKernel(S, 1, method="krylov", tol=1e-4, dtype=torch.float32)
    calls = []
    real = K.lanczos_expm_fused
    monkeypatch.setattr(K, "lanczos_expm_fused",
                        lambda op, *a, **k: calls.append(op.dtype) or real(op, *a, **k))
    x = torch.randn(S.n_vertices, 32, dtype=torch.complex64,
                    generator=torch.Generator().manual_seed(2))
    y = H(x, 2.0)
    assert calls == [np.float32, np.float64] and y.dtype == torch.complex64
    A = mmp.connection_laplacian(S, 1).toarray() / S.vertex_areas[:, None]
    ref = la.expm(-2.0 * A) @ x.numpy().astype(np.complex128)
    assert np.linalg.norm(y.numpy() - ref) < 1e-4 * np.linalg.norm(ref)


def test_fused_lanczos_refuses_bad_input_and_reports_no_convergence() -> None:
    from manifoldmp.spectral.krylov import KrylovNotConverged, lanczos_expm_fused

    S = _scrambled_operator(1)
    op = FusedOperator.from_scipy(S)
    V = S.shape[0]
    s = np.ones(V)
    x = np.random.default_rng(0).standard_normal((V, 2)) + 0j
    t = np.ones(2)
    bad = [
        (lambda: lanczos_expm_fused(op, 1.0, x, s, np.ones(3)), "2 finite non-negative"),
        (lambda: lanczos_expm_fused(op, 1.0, x, s, -t), "non-negative"),
        (lambda: lanczos_expm_fused(op, 1.0, x, s, t * np.nan), "non-negative"),
        (lambda: lanczos_expm_fused(op, 0.0, x, s, t), "bound"),
        (lambda: lanczos_expm_fused(op, 1.0, x, s, t, tol=-1.0), "tol"),
        (lambda: lanczos_expm_fused(op, 1.0, x, s, t, max_steps=0), "max_steps"),
        (lambda: lanczos_expm_fused(op, 1.0, x, s, t, check_every=0), "check_every"),
        (lambda: lanczos_expm_fused(op, 1.0, x * np.nan, s, t), "non-finite"),
        (lambda: lanczos_expm_fused(op, 1.0, x[0], s, t), r"\(V, C\)"),
        (lambda: lanczos_expm_fused(op, 1.0, x.real, s, t), "complex x"),
    ]
    for call, match in bad:
        with pytest.raises(ParameterError, match=match):
            call()
    b = 4.0   # S = (4 / b) B - 2 I with b = 4: B = S + 2 I
    with pytest.raises(KrylovNotConverged, match="2 steps"):
        lanczos_expm_fused(op, b, x, s, t * 50, tol=1e-12, max_steps=2)


def test_workspace_blocks_are_reused_unread_and_never_shared(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks kept between flows: a flow on blocks full of NaN (as left by anything) equals
    the plain recurrence, so no kernel reads a block before writing it; two live recurrences
    never share a block; a closed recurrence refuses to go on; the budget and the release."""
    from manifoldmp.spectral import fused
    from manifoldmp.spectral.fused import FusedLanczos, release_workspace
    from manifoldmp.spectral.krylov import lanczos_expm_fused

    S = _scrambled_operator(1, seed=8)
    V = S.shape[0]
    rng = np.random.default_rng(9)
    C = 40                                   # two column blocks: 32 + 8 complex
    x = rng.standard_normal((V, C)) + 1j * rng.standard_normal((V, C))
    s = rng.uniform(0.5, 2.0, V)
    coef = rng.standard_normal((6, C))
    tail = rng.standard_normal(C)
    op = FusedOperator.from_scipy(S)
    ref = _reference(S, x, s, coef, 5, tail)
    release_workspace()
    poison = [np.full((V, 2 * w), np.nan) for w in (32, 8) for _ in range(4)]
    fused._WORKSPACE.give(poison)
    assert fused._WORKSPACE.nbytes() == sum(a.nbytes for a in poison)
    R = FusedRecurrence(op, x, s)
    R2 = FusedRecurrence(op, x, s)           # both live: disjoint blocks
    ids = {id(a) for a in R._blocks_held() if a is not None}
    assert ids and ids.isdisjoint({id(a) for a in R2._blocks_held() if a is not None})
    assert ids & {id(a) for a in poison}    # blocks were taken from the workspace
    for d in (2, 5):
        R.advance(d, coef)
    out = R.result(tail)
    assert np.abs(out - ref).max() < 1e-13 * np.abs(ref).max()
    assert not np.shares_memory(out, poison[0]) and not np.any(np.isnan(out))
    for call in (lambda: R.advance(7, coef), lambda: R.result(tail), R.input_norms):
        with pytest.raises(ParameterError, match="returned its result"):
            call()
    R2.advance(5, coef)   # one call: another pass order than R's, the same sum to rounding
    assert np.abs(R2.result(tail) - ref).max() < 1e-13 * np.abs(ref).max()
    # Lanczos on poisoned blocks equals Lanczos on fresh ones
    fused._WORKSPACE.give([np.full((V, 2 * w), np.nan) for w in (32, 8) for _ in range(6)])
    y1, _ = lanczos_expm_fused(op, 4.0, x, s, np.full(C, 0.3), tol=1e-10)
    release_workspace()
    y2, _ = lanczos_expm_fused(op, 4.0, x, s, np.full(C, 0.3), tol=1e-10)
    assert not np.any(np.isnan(y1)) and np.abs(y1 - y2).max() <= 1e-13 * np.abs(y2).max()
    assert isinstance(FusedLanczos(op, x, s), FusedLanczos)
    # the budget: newest blocks first, nothing beyond it; the release frees all
    assert release_workspace() > 0 and fused._WORKSPACE.nbytes() == 0
    one = np.empty((V, 64)).nbytes
    monkeypatch.setattr(fused, "WORKSPACE_BYTES", 2 * one)
    a, b, c = (np.empty((V, 64)) for _ in range(3))
    fused._WORKSPACE.give([a, b, c])
    assert fused._WORKSPACE.nbytes() == 2 * one
    assert fused._WORKSPACE.take((V, 64), np.float64) is c
    assert fused._WORKSPACE.take((V, 64), np.float64) is b
    fresh = fused._WORKSPACE.take((V, 64), np.float64)
    assert fresh is not a and np.all(fresh == 0)
    assert release_workspace() == 0
