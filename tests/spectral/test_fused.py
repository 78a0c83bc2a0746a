"""Fused CPU Chebyshev kernels against the plain recurrence and the torch path."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_heat_kernel_fused_equals_torch_path(n: int, dtype: torch.dtype) -> None:
    S = mmp.meshes.jittered_sphere(2, amount=0.3)
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    H = mmp.HeatKernel(S, n, method="chebyshev", tol=tol, dtype=dtype)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(S.n_vertices, 40, dtype=dtype, generator=g)
    if n:
        x = torch.complex(x, torch.randn(x.shape, dtype=dtype, generator=g))
    t = torch.logspace(-4, 0, 40, dtype=torch.float64)
    y = H(x, t)
    assert H._fused(x) is not None
    assert H._fused(x[:, :2]) is None   # 8 to 32 bytes per row: torch's product is faster
    # float32 at t = 1 is below its rounding floor: redone in float64, fused as well
    assert np.float64 in H._fused_S
    info = H.last_chebyshev
    H.FUSED = False
    y_ref = H(x, t)
    assert H._fused(x) is None and H.last_chebyshev.degree == info.degree
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert y.dtype == x.dtype
    assert (y - y_ref).abs().max() <= rtol * y_ref.abs().max()


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
