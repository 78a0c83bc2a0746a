"""Repairs of defective input: each case is built by hand and checked for what it must produce."""

import logging

import numpy as np
import pytest

import manifoldmp as mmp
from tests.conftest import DEFECTIVE_SHARED, shared_mesh


def _check_operators(S):
    """Finite, Hermitian, zero row sums (n=0), PSD-consistent mass."""
    for n in (0, 1, 2):
        L = mmp.connection_laplacian(S, n)
        assert np.all(np.isfinite(L.data))
        assert abs(L - L.conj().T).max() <= 1e-12 * max(1.0, abs(L).max())
    L0 = mmp.connection_laplacian(S, 0)
    assert np.abs(L0 @ np.ones(S.n_vertices)).max() < 1e-9 * max(1.0, abs(L0).max())
    m = mmp.mass_matrix(S).diagonal()
    assert np.all(np.isfinite(m)) and np.all(m >= 0)
    assert np.isclose(m.sum(), S.face_areas.sum())
    assert np.all(np.isfinite(S.transport_angles))


def test_clean_mesh_needs_no_repair():
    S = mmp.meshes.icosphere(2)
    assert not any(S.repairs.values())
    assert np.array_equal(S.vertex_origin, np.arange(S.n_vertices))


def test_degenerate_and_duplicate_faces_dropped(caplog):
    S0 = mmp.meshes.icosphere(1)
    f = np.vstack([S0.faces, S0.faces[:3], [[0, 0, 1]]])
    with caplog.at_level(logging.WARNING):
        S = mmp.Surface(S0.vertices, f)
    assert S.repairs["duplicate_faces_dropped"] == 3
    assert S.repairs["degenerate_faces_dropped"] == 1
    assert "mesh repaired" in caplog.text
    assert S.n_faces == S0.n_faces and S.euler_characteristic == 2
    assert np.array_equal(S.face_origin, np.arange(S0.n_faces))
    _check_operators(S)


def test_unreferenced_vertices_dropped():
    S0 = mmp.meshes.icosphere(1)
    v = np.vstack([[[5.0, 5, 5]], S0.vertices])
    S = mmp.Surface(v, S0.faces + 1)
    assert S.repairs["unreferenced_vertices_dropped"] == 1
    assert S.n_vertices == S0.n_vertices
    assert np.array_equal(S.vertex_origin, np.arange(1, S0.n_vertices + 1))
    assert np.all(S.vertex_areas > 0)


def test_flipped_face_is_reoriented():
    S0 = mmp.meshes.icosphere(2)
    f = S0.faces.copy()
    f[[3, 10]] = f[[3, 10]][:, [0, 2, 1]]
    S = mmp.Surface(S0.vertices, f)
    assert S.repairs["faces_flipped"] == 2
    assert np.array_equal(S.faces, S0.faces)  # majority orientation kept
    assert np.isclose(S.face_holonomy.sum(), 4 * np.pi)


def test_bowtie_vertex_is_split():
    # two triangles sharing only vertex 0
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0.0]])
    S = mmp.Surface(v, [[0, 1, 2], [0, 3, 4]])
    assert S.repairs["vertices_split"] == 1
    assert S.n_vertices == 6 and S.n_components == 2 and S.n_boundary_loops == 2
    assert sorted(S.vertex_origin.tolist()) == [0, 0, 1, 2, 3, 4]
    _check_operators(S)


def test_nonmanifold_edge_is_cut():
    # a "book" of three pages sharing edge (0, 1)
    v = np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0.0]])
    S = mmp.Surface(v, [[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    assert S.repairs["non_manifold_edges_cut"] == 1
    assert S.n_components == 3 and S.euler_characteristic == 3
    _check_operators(S)


def test_moebius_strip_is_cut_not_crashed():
    n = 12
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    v = []
    for s in (-0.3, 0.3):
        v.append(np.stack([(1 + s * np.cos(t / 2)) * np.cos(t), (1 + s * np.cos(t / 2)) * np.sin(t),
                           s * np.sin(t / 2)], 1))
    v = np.vstack(v)
    faces = []
    for i in range(n):
        a, b = i, (i + 1) % n
        c, d = n + i, n + (i + 1) % n
        if i == n - 1:  # the half twist glues the strip's two sides crosswise
            c, d = n + i, 0
            b = n
        faces += [[a, b, d], [a, d, c]]
    S = mmp.Surface(v, faces)
    assert S.repairs["non_orientable_edges_cut"] >= 1
    _check_operators(S)


def test_degenerate_triangle_is_mollified(caplog):
    # a collinear (zero-area) triangle inside a fan
    v = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [1, 1, 0], [1, -1, 0.0]])
    with caplog.at_level(logging.WARNING):
        S = mmp.Surface(v, [[0, 1, 3], [1, 2, 3], [0, 2, 1], [0, 4, 2]])
    assert S.mollified_by > 0 and "mollified" in caplog.text
    assert np.all(S.face_areas > 0)
    _check_operators(S)


@pytest.mark.parametrize("name", DEFECTIVE_SHARED)
def test_shared_defective_meshes_build_finite_hermitian_operators(name):
    S = mmp.Surface.load(shared_mesh(name))
    _check_operators(S)
    assert np.all(S.vertex_origin >= 0)
    # the repaired mesh is a manifold with boundary: every halfedge has at most one twin
    tw = S.twin
    has = tw >= 0
    assert np.array_equal(tw[tw[has]], np.flatnonzero(has))
