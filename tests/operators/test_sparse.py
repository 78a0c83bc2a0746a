import numpy as np
import pytest
import scipy.sparse as sp
import torch

import manifoldmp as mmp


@pytest.mark.parametrize("layout", ["csr", "coo"])
@pytest.mark.parametrize("n", [0, 2])
def test_torch_conversion_keeps_dtype_and_values(n, layout, rng):
    S = mmp.meshes.icosphere(2)
    L = mmp.connection_laplacian(S, n)
    T = mmp.to_torch_sparse(L, layout=layout)
    assert T.dtype == (torch.float64 if n == 0 else torch.complex128)
    x = rng.normal(size=(S.n_vertices, 3))
    x = x + 1j * rng.normal(size=x.shape) if n else x
    y = (T @ torch.from_numpy(x)).numpy()
    assert np.abs(y - L @ x).max() < 1e-12 * abs(L).max()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_real_block_form(dtype, tol, rng):
    S = mmp.meshes.icosphere(2)
    L = mmp.connection_laplacian(S, 1)
    B = mmp.complex_to_real_block(L)
    z = rng.normal(size=S.n_vertices) + 1j * rng.normal(size=S.n_vertices)
    x = np.stack([z.real, z.imag], 1).ravel()  # interleaved (Re, Im)
    T = mmp.to_torch_sparse(L, form="real_block").to(dtype)
    y = (T @ torch.from_numpy(x).to(dtype)).double().numpy()
    w = L @ z
    assert np.abs(y - np.stack([w.real, w.imag], 1).ravel()).max() < tol * np.abs(w).max()
    # every eigenvalue doubles
    ev_c = np.linalg.eigvalsh(L.toarray())
    ev_r = np.linalg.eigvalsh(B.toarray())
    assert np.abs(np.repeat(ev_c, 2) - ev_r).max() < 1e-10
    st = mmp.complex_to_real_block(L, layout="stacked")
    assert sp.issparse(st) and np.abs(np.linalg.eigvalsh(st.toarray()) - ev_r).max() < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32, torch.complex64])
@pytest.mark.parametrize("workspace", [False, True])
@pytest.mark.parametrize("V", [37, 70001])   # one chunk; several, the last one partial
def test_column_real_dot_matches_the_formula(dtype, workspace, V, rng):
    from manifoldmp.operators.sparse import column_real_dot

    C = 5
    a = torch.from_numpy(rng.normal(size=(V, C)) + 1j * rng.normal(size=(V, C)))
    b = torch.from_numpy(rng.normal(size=(V, C)) + 1j * rng.normal(size=(V, C)))
    if not dtype.is_complex:
        a, b = a.real, b.real
    a, b = a.to(dtype), b.to(dtype)
    real = a.real.dtype if dtype.is_complex else dtype
    tol = 1e-13 if real == torch.float64 else 1e-5
    want = np.real(np.conj(a.numpy().astype(np.complex128)) * b.numpy()).sum(axis=0)
    ws = torch.full((V, C * (2 if dtype.is_complex else 1)), np.nan, dtype=real) \
        if workspace else None
    got = column_real_dot(a, b, workspace=ws)
    assert got.dtype == real and got.shape == (C,)
    assert np.abs(got.double().numpy() - want).max() < tol * np.abs(want).max()
    if dtype.is_complex:   # a conjugate view (lazy conj bit) is read as its value
        got_c = column_real_dot(b.conj(), a.conj(), workspace=ws)
        assert np.abs(got_c.double().numpy() - want).max() < tol * np.abs(want).max()
        norm = column_real_dot(a, a, workspace=ws).sqrt()
        assert torch.allclose(norm, torch.linalg.vector_norm(a, dim=0), rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32, torch.complex64])
def test_all_finite_against_elementwise_check(dtype, rng):
    from manifoldmp.operators.sparse import all_finite

    big = torch.finfo(torch.float32 if dtype in (torch.float32, torch.complex64)
                      else torch.float64).max
    x = torch.from_numpy(rng.normal(size=(50, 3)) + 1j * rng.normal(size=(50, 3)))
    x = (x if dtype.is_complex else x.real).to(dtype)
    assert all_finite(x) and all_finite(x[:0])
    # finite entries whose sum overflows: the slow check must still say finite
    huge = torch.full((4, 2), big / 2, dtype=dtype)
    assert not bool(torch.isfinite(huge.sum())) and all_finite(huge)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in ((0, 0), (49, 2), (17, 1)):
            y = x.clone()
            y[where] = bad
            assert not all_finite(y)
            if dtype.is_complex:   # a bad imaginary part alone
                z = x.clone()
                z[where] = complex(1.0, bad)
                assert not all_finite(z)
    y = x.clone()
    y[0, 0], y[1, 1] = float("inf"), -float("inf")    # inf - inf: the sum is nan
    assert not all_finite(y)
