import numpy as np
import pytest

import manifoldmp as mmp


def _inner_vec(m, x, y):
    return np.sum(m * np.real(np.conj(x) * y))


@pytest.mark.parametrize("make", [lambda: mmp.meshes.genus2(), lambda: mmp.meshes.disk(),
                                  lambda: mmp.meshes.flat_torus(6, 5)])
def test_divergence_is_minus_mass_adjoint(make, rng):
    S = make()
    m = S.vertex_areas
    u = rng.normal(size=S.n_vertices)
    x = rng.normal(size=S.n_vertices) + 1j * rng.normal(size=S.n_vertices)
    lhs = _inner_vec(m, x, mmp.gradient(S, u))
    rhs = -np.sum(m * u * mmp.divergence(S, x))
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))


def test_gradient_of_linear_function_is_exact_on_jittered_flat_grid():
    S = mmp.meshes.flat_grid(10, 8, width=2.0, height=1.3, jitter=0.35, seed=3)
    a = np.array([0.3, -1.7, 0.0])
    g = mmp.gradient(S, S.vertices @ a)
    fr = S.frames
    g3 = g.real[:, None] * fr[:, 0] + g.imag[:, None] * fr[:, 1]
    # exact at every vertex, the four rectangle corners (angle sum pi / 2) included
    assert (np.abs(S.angle_defects) > 1).sum() == 4
    assert np.abs(g3 - a).max() < 1e-12


def test_divergence_of_constant_vector_field_vanishes_inside():
    S = mmp.meshes.flat_grid(8, 8, jitter=0.3)
    u = S.vertices @ np.array([1.0, 2.0, 0.0])
    div = mmp.divergence(S, mmp.gradient(S, u))  # grad of linear = constant field
    assert np.abs(div[~S.is_boundary_vertex]).max() < 1e-10
    assert np.abs(div[S.is_boundary_vertex]).max() > 1e-3  # boundary flux is real


@pytest.mark.parametrize("make", [lambda: mmp.meshes.jittered_sphere(2),
                                  lambda: mmp.meshes.disk(6)])
def test_gradient_gauge_covariance(make, rng):
    S = make()
    a = rng.uniform(0, 2 * np.pi, S.n_vertices)
    G = mmp.gradient_matrix(S).toarray()
    G2 = mmp.gradient_matrix(S.regauge(a)).toarray()
    assert np.abs(G2 - np.exp(-1j * a)[:, None] * G).max() < 1e-12


def test_gradient_matches_embedded_gradient_on_sphere():
    # grad of z on the unit sphere is the tangential part of e_z
    S = mmp.meshes.icosphere(4)
    g = mmp.gradient(S, S.vertices[:, 2])
    fr = S.frames
    g3 = g.real[:, None] * fr[:, 0] + g.imag[:, None] * fr[:, 1]
    n = S.vertices
    expect = np.array([0, 0, 1.0]) - n[:, 2:3] * n
    assert np.abs(g3 - expect).max() < 0.02


def test_pointcloud_gradient_exact_on_plane_and_adjoint(rng):
    p = np.c_[rng.uniform(-1, 1, (400, 2)), np.zeros(400)]
    P = mmp.PointCloud(p, np.tile([0, 0, 1.0], (400, 1)), n_neighbors=12)
    a = np.array([0.4, 1.1, 0.0])
    g = mmp.gradient(P, p @ a)
    fr = P.frames
    g3 = g.real[:, None] * fr[:, 0] + g.imag[:, None] * fr[:, 1]
    assert np.abs(g3 - a).max() < 1e-12
    m = P.vertex_areas
    u = rng.normal(size=400)
    x = rng.normal(size=400) + 1j * rng.normal(size=400)
    assert abs(_inner_vec(m, x, mmp.gradient(P, u)) + np.sum(m * u * mmp.divergence(P, x))) < 1e-10
