import numpy as np
import pytest

import manifoldmp as mmp
from manifoldmp.errors import ManifoldmpError, MeshError, ParameterError

V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]])
F = np.array([[0, 1, 2], [1, 3, 2]])


def test_errors_are_value_errors():
    assert issubclass(MeshError, ValueError) and issubclass(ParameterError, ValueError)
    assert issubclass(MeshError, ManifoldmpError)


@pytest.mark.parametrize(
    ("verts", "faces", "match"),
    [
        (np.where(np.arange(12).reshape(4, 3) == 4, np.nan, V), F, r"non-finite.*row 1"),
        (np.where(np.arange(12).reshape(4, 3) == 7, np.inf, V), F, r"non-finite.*row 2"),
        (V[:, :2], F, r"shape \(N, 3\)"),
        (V, F[:, :2], r"shape \(F, 3\)"),
        (V, np.array([[0, 1, 2, 3]]), "triangulate"),
        (V, np.array([[0, 1, 7]]), r"index 7 outside \[0, 4\)"),
        (V, np.array([[0, -1, 2]]), r"index -1 outside"),
        (np.zeros((0, 3)), F, "empty"),
        (V, np.zeros((0, 3), dtype=int), "empty"),
        (V, np.array([[0, 1, 2.5]]), "integer"),
        (V, np.array([["a", "b", "c"]]), "integer"),
        (V.astype(complex), F, "real"),
        ([[0, 0, 0], [1, 0]], F, "array"),
    ],
)
def test_bad_surface_input(verts, faces, match):
    with pytest.raises(MeshError, match=match):
        mmp.Surface(verts, faces)


def test_only_degenerate_faces_is_an_error():
    with pytest.raises(MeshError, match="repeated vertex"):
        mmp.Surface(V, [[0, 0, 1], [2, 2, 2]])


def test_intrinsic_inconsistent_lengths_are_named():
    faces = [[0, 1, 2], [1, 3, 2]]
    lengths = [[1.0, 1.4, 1.0], [1.0, 1.0, 1.5]]  # edge (1, 2): 1.4 vs 1.5
    with pytest.raises(MeshError, match=r"edge \(1, 2\)"):
        mmp.Surface.from_edge_lengths(faces, lengths)
    with pytest.raises(MeshError, match="<= 0"):
        mmp.Surface.from_edge_lengths(faces, [[1.0, 0.0, 1.0], [1, 1, 1]])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda S: mmp.connection_laplacian(S, 1.5), "n must be an integer"),
        (lambda S: mmp.connection_laplacian(S, True), "n must be an integer"),
        (lambda S: mmp.connection_laplacian("mesh", 1), "Surface or manifoldmp.PointCloud"),
        (lambda S: mmp.bundle_laplacian(S, 1, casimir=-1.0), "casimir must be finite and >= 0"),
        (lambda S: mmp.bundle_laplacian(S, 1, casimir=float("nan")), "casimir"),
        (lambda S: S.regauge(np.zeros(3)), r"alpha must have shape \(4,\)"),
        (lambda S: S.regauge(np.full(4, np.nan)), "not finite"),
        (lambda S: mmp.gradient(S, np.zeros(5)), r"u must have shape \(4,\)"),
        (lambda S: mmp.gradient(S, np.zeros(4, complex)), "must be real"),
        (lambda S: mmp.divergence(S, np.full(4, np.nan)), "non-finite"),
        (lambda S: mmp.to_torch_sparse(S), "scipy.sparse"),
        (lambda S: mmp.to_torch_sparse(mmp.mass_matrix(S), form="dense"), "form must be one of"),
        (lambda S: mmp.meshes.load("no-such-mesh"), "available"),
        (lambda S: mmp.meshes.icosphere(-1), "subdivisions must be >= 0"),
        (lambda S: mmp.meshes.flat_torus(2, 5), "nx must be >= 3"),
        (lambda S: mmp.meshes.torus(1.0, 2.0), "smaller than major"),
    ],
)
def test_bad_arguments(call, match):
    S = mmp.Surface(V, F)
    with pytest.raises(ParameterError, match=match):
        call(S)


def test_bad_pointcloud_input():
    p = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(MeshError, match="non-finite"):
        mmp.PointCloud(np.where(np.arange(150).reshape(50, 3) == 5, np.nan, p))
    with pytest.raises(MeshError, match="more than n_neighbors"):
        mmp.PointCloud(p[:10], n_neighbors=30)
    with pytest.raises(MeshError, match=r"normals\[3\] has zero length"):
        n = np.ones_like(p)
        n[3] = 0
        mmp.PointCloud(p, n)
    with pytest.raises(ParameterError, match="n_neighbors must be >= 3"):
        mmp.PointCloud(p, n_neighbors=1)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmp.Surface.load(tmp_path / "missing.obj")
    pts = tmp_path / "pts.ply"
    pts.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(MeshError, match="no triangles"):
        mmp.Surface.load(pts)
