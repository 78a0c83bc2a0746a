import numpy as np
import pytest
import robust_laplacian
import scipy.sparse.linalg as sla

import manifoldmp as mmp
from tests.conftest import shared_mesh


@pytest.fixture(scope="module")
def sphere_cloud():
    p = np.random.default_rng(7).normal(size=(4000, 3))
    return mmp.PointCloud(p / np.linalg.norm(p, axis=1, keepdims=True))


def test_pca_normals_are_consistently_outward(sphere_cloud):
    P = sphere_cloud
    cos = np.einsum("ij,ij->i", P.normals, P.points)
    assert np.all(cos > 0.95)


def test_scalar_operator_equals_robust_laplacian(sphere_cloud):
    P = sphere_cloud
    L, M = robust_laplacian.point_cloud_laplacian(P.points, mollify_factor=1e-5, n_neighbors=30)
    assert abs(mmp.connection_laplacian(P, 0) - L).max() < 1e-12
    np.testing.assert_allclose(mmp.mass_matrix(P).diagonal(), M.diagonal())


def test_scalar_operator_needs_no_normals():
    # the type-0 Laplacian of a cloud is robust_laplacian's: no PCA normals, no orientation, no
    # transports (they are a third of the cloud build); type 1 computes them
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 3))
    P = mmp.PointCloud(X / np.linalg.norm(X, axis=1, keepdims=True))
    L0 = mmp.connection_laplacian(P, 0)
    assert "normals" not in P.__dict__.get("_cache", {})
    assert "transport_angles" not in P.__dict__.get("_gcache", {})
    L1 = mmp.connection_laplacian(P, 1)
    assert "normals" in P._cache
    # same weights: |L1| off the diagonal is L0's
    assert abs(abs(L1) - abs(L0)).max() < 1e-14 * abs(L0).max()


def test_sphere_type1_multiplicities_and_ratios(sphere_cloud):
    P = sphere_cloud
    L = mmp.connection_laplacian(P, 1)
    assert abs(L - L.conj().T).max() < 1e-14
    ev = np.sort(sla.eigsh(L, k=16, M=mmp.mass_matrix(P), sigma=-0.5)[0])
    # l = 1, 2, 3: eigenvalue l(l+1) - 1 = 1, 5, 11 with multiplicities 3, 5, 7
    gaps = np.diff(ev[:16]) / ev[1:16]
    assert set(np.flatnonzero(gaps > 0.2).tolist()) == {2, 7, 14}
    ratio = ev / ev[:3].mean()
    expect = np.array([1] * 3 + [5] * 5 + [11] * 7, dtype=float)
    assert np.all(np.abs(ratio[:15] - expect) / expect < 0.02)


def test_pointcloud_gauge_covariance(sphere_cloud, rng):
    P = sphere_cloud
    a = rng.uniform(0, 2 * np.pi, P.n_vertices)
    for n in (1, 2):
        L = mmp.connection_laplacian(P, n)
        L2 = mmp.connection_laplacian(P.regauge(a), n)
        D = np.exp(-1j * n * a)
        diff = L2 - L.multiply(D[:, None]).multiply(np.conj(D)[None, :])
        assert abs(diff).max() < 1e-12


def test_flipped_input_normals_are_kept_but_pca_fixes_orientation(rng):
    p = rng.normal(size=(600, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    P = mmp.PointCloud(p)
    assert np.all(np.einsum("ij,ij->i", P.normals, p) > 0.9)
    Q = mmp.PointCloud(p, -p)  # given normals are trusted
    np.testing.assert_allclose(Q.normals, -p)


def test_shared_scan_point_cloud_builds_finite_operators():
    P = mmp.PointCloud.load(shared_mesh("armadillo_points.ply"))
    L = mmp.connection_laplacian(P, 1)
    assert np.all(np.isfinite(L.data)) and abs(L - L.conj().T).max() < 1e-12
    assert np.all(mmp.mass_matrix(P).diagonal() > 0)
