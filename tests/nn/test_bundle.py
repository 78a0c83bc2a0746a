"""OperatorBundle: agreement with the scipy operators, edge conventions, save/load, casting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import manifoldmp as mmp
from manifoldmp.errors import ParameterError
from manifoldmp.nn import OperatorBundle, precompute


@pytest.fixture(scope="module")
def bumpy() -> mmp.Surface:
    S = mmp.meshes.icosphere(2)
    r = 1 + 0.1 * np.random.default_rng(0).standard_normal((S.n_vertices, 1))
    return mmp.Surface(S.vertices * r, S.faces)


def domains(bumpy: mmp.Surface) -> list:
    return [bumpy, mmp.PointCloud(mmp.meshes.icosphere(3).vertices)]


@pytest.mark.parametrize("which", [0, 1])
def test_edge_form_reproduces_connection_laplacians(bumpy: mmp.Surface, which: int) -> None:
    D = domains(bumpy)[which]
    ops = precompute(D, max_type=3, k_eig=0)
    m = ops.mass.numpy()
    for n in range(4):
        Ln = mmp.connection_laplacian(D, n).toarray()
        A = np.diag(ops.degree().numpy()) - ops.edge_operator(n, 0).to_dense().numpy()
        assert np.abs(A - Ln / m[:, None]).max() < 1e-12 * np.abs(Ln / m[:, None]).max()
        assert np.abs(ops.laplacian(n).to_dense().numpy() - Ln).max() == 0.0


def test_symmetric_laplacian_is_the_symmetrised_pencil(bumpy: mmp.Surface) -> None:
    ops = precompute(bumpy, max_type=2, k_eig=0)
    s = 1 / np.sqrt(ops.mass.numpy())
    for n in range(3):
        ref = s[:, None] * mmp.connection_laplacian(bumpy, n).toarray() * s[None, :]
        B = ops.symmetric_laplacian(n)
        assert B.layout == torch.sparse_csr and B.dtype == ops.laplacian(n).dtype
        got = B.to_dense().numpy()
        assert np.abs(got - ref).max() < 1e-13 * np.abs(ref).max()
        assert np.abs(got - got.conj().T).max() < 1e-13 * np.abs(ref).max()   # Hermitian
        assert ops.symmetric_laplacian(n) is B   # cached
    Bc = ops.symmetric_laplacian(0, torch.complex128)   # real operator in complex storage
    assert Bc.dtype == torch.complex128
    assert torch.equal(Bc.to_dense().real, ops.symmetric_laplacian(0).to_dense())
    with pytest.raises(ParameterError, match="complex"):
        ops.symmetric_laplacian(1, torch.float64)   # would drop the imaginary part
    with pytest.raises(ParameterError, match="floating or complex"):
        ops.symmetric_laplacian(0, torch.int64)
    with pytest.raises(ParameterError, match="max_type"):
        ops.symmetric_laplacian(3)
    B32 = ops.to(dtype=torch.float32).symmetric_laplacian(1)
    ref = s[:, None] * mmp.connection_laplacian(bumpy, 1).toarray() * s[None, :]
    assert B32.dtype == torch.complex64
    assert np.abs(B32.to_dense().numpy() - ref).max() < 1e-6 * np.abs(ref).max()


def test_edge_angles_match_the_embedding_on_a_flat_grid() -> None:
    S = mmp.meshes.flat_grid(6, 5)
    ops = precompute(S, max_type=1, k_eig=0)
    src, tgt = ops.edge_index.numpy()
    P, fr = S.vertices, S.frames
    d = P[src] - P[tgt]
    ang = np.arctan2((d * fr[tgt, 1]).sum(1), (d * fr[tgt, 0]).sum(1))
    diff = np.angle(np.exp(1j * (ang - ops.edge_angle.numpy())))
    assert np.abs(diff).max() < 1e-12
    assert np.allclose(ops.edge_length.numpy(), np.linalg.norm(d, axis=1), atol=1e-14)


def test_eigenpairs_are_m_orthonormal_and_not_cut_inside_a_cluster() -> None:
    S = mmp.meshes.icosphere(3)
    ops = precompute(S, max_type=1, k_eig=10)   # sphere type 0: 1 + 3 + 5 + 7 ... -> 9 kept
    assert ops.evals[0].shape == (9,)
    phi = ops.evecs[1]
    G = phi.conj().T @ (ops.mass[:, None] * phi)
    assert torch.allclose(G, torch.eye(G.shape[0], dtype=G.dtype), atol=1e-10)


def test_save_load_roundtrip_is_bit_exact(tmp_path, bumpy: mmp.Surface) -> None:
    ops = precompute(bumpy, max_type=2, k_eig=12)
    ops.save(tmp_path / "ops.pt")
    back = OperatorBundle.load(tmp_path / "ops.pt")
    for name in ("mass", "edge_index", "edge_weight", "transport", "edge_angle", "faces"):
        assert torch.equal(getattr(ops, name), getattr(back, name))
    for a, b in zip(ops.laplacians + ops.evecs, back.laplacians + back.evecs, strict=True):
        assert torch.equal(a.to_dense(), b.to_dense())
    assert torch.equal(ops.gradient.to_dense(), back.gradient.to_dense())
    assert back.spec == ops.spec and back.mean_edge_length == ops.mean_edge_length
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ParameterError, match="not an OperatorBundle file"):
        OperatorBundle.load(tmp_path / "bad.pt")
    torch.save({"schema": 99}, tmp_path / "old.pt")
    with pytest.raises(ParameterError, match="schema"):
        OperatorBundle.load(tmp_path / "old.pt")


def test_to_casts_every_tensor(bumpy: mmp.Surface) -> None:
    ops = precompute(bumpy, max_type=2, k_eig=8)
    o32 = ops.to(dtype=torch.float32)
    assert o32.dtype == torch.float32 and o32.laplacians[1].dtype == torch.complex64
    assert o32.evecs[0].dtype == torch.float32 and o32.edge_index.dtype == torch.int64
    back = o32.to(dtype=torch.float64)
    assert torch.allclose(back.mass, ops.mass, rtol=1e-7)
    with pytest.raises(ParameterError, match="dtype"):
        ops.to(dtype=torch.int32)


def test_bad_arguments(bumpy: mmp.Surface) -> None:
    with pytest.raises(ParameterError, match="max_type"):
        precompute(bumpy, max_type=-1)
    with pytest.raises(ParameterError, match="domain"):
        precompute(np.zeros((3, 3)))
    ops = precompute(bumpy, max_type=1, k_eig=0)
    with pytest.raises(ParameterError, match="max_type >= 2"):
        ops.laplacian(2)
