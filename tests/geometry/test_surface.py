import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import manifoldmp as mmp
from tests.conftest import CLOSED_SHARED, shared_mesh


def _wrap(a):
    return np.pi - np.mod(np.pi - a, 2 * np.pi)


@pytest.mark.parametrize(
    ("make", "chi", "genus", "loops"),
    [
        (lambda: mmp.meshes.icosphere(2), 2, 0, 0),
        (lambda: mmp.meshes.uv_sphere(), 2, 0, 0),
        (lambda: mmp.meshes.random_sphere(300), 2, 0, 0),
        (lambda: mmp.meshes.torus(), 0, 1, 0),
        (lambda: mmp.meshes.flat_torus(5, 7), 0, 1, 0),
        (lambda: mmp.meshes.genus2(), -2, 2, 0),
        (lambda: mmp.meshes.disk(), 1, 0, 1),
        (lambda: mmp.meshes.flat_grid(4, 5), 1, 0, 1),
        (lambda: mmp.meshes.ellipsoid(), 2, 0, 0),
    ],
)
def test_generator_topology_and_gauss_bonnet(make, chi, genus, loops):
    S = make()
    assert (S.euler_characteristic, S.genus, S.n_boundary_loops) == (chi, genus, loops)
    assert not any(S.repairs.values())
    assert abs(S.angle_defects.sum() - 2 * np.pi * chi) < 1e-10
    assert abs(S.face_holonomy.sum() - 2 * np.pi * chi) < 1e-10
    assert np.isclose(S.vertex_areas.sum(), S.face_areas.sum(), rtol=1e-14)


def test_face_holonomy_is_rescaled_angle_sum_minus_pi():
    for S in (mmp.meshes.jittered_sphere(3), mmp.meshes.genus2(), mmp.meshes.disk()):
        expect = _wrap(S.rescaled_corner_angles.sum(axis=1) - np.pi)
        assert np.abs(_wrap(S.face_holonomy - expect)).max() < 1e-12


def test_transport_is_antisymmetric_and_gauge_shifts_it(rng):
    S = mmp.meshes.jittered_sphere(2)
    rho = S.transport_angles.ravel()
    tw = S.twin
    assert np.abs(_wrap(rho + rho[tw])).max() < 1e-12
    a = rng.uniform(0, 2 * np.pi, S.n_vertices)
    S2 = S.regauge(a)
    f = S.faces
    shift = a[f] - a[f[:, [1, 2, 0]]]  # rho' = rho + alpha_i - alpha_j
    assert np.abs(_wrap(S2.transport_angles - S.transport_angles - shift)).max() < 1e-12
    assert np.abs(_wrap(S2.face_holonomy - S.face_holonomy)).max() < 1e-12
    # gauge-invariant quantities are shared, not recomputed
    assert S2.cotan_weights is S.cotan_weights


def test_intrinsic_equals_embedded_and_rigid_motion_invariance(rng):
    S = mmp.meshes.jittered_sphere(2)
    T = mmp.Surface.from_edge_lengths(S.faces, S.halfedge_lengths)
    R = Rotation.random(random_state=1).as_matrix()
    Sm = mmp.Surface(S.vertices @ R.T * 1.0 + [3.0, -1.0, 2.0], S.faces)
    for other in (T, Sm):
        for name in ("face_areas", "corner_angles", "cotan_weights", "vertex_areas",
                     "angle_defects", "transport_angles"):
            np.testing.assert_allclose(getattr(other, name), getattr(S, name), atol=1e-12)


def test_cached_quantities_are_read_only():
    S = mmp.meshes.icosphere(1)
    for arr in (S.vertices, S.faces, S.cotan_weights, S.transport_angles, S.frames):
        with pytest.raises(ValueError):
            arr[0] = 0


def test_frames_are_orthonormal_right_handed_and_rotate_with_gauge(rng):
    S = mmp.meshes.torus()
    fr = S.frames
    gram = np.einsum("vij,vkj->vik", fr, fr)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), fr.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(fr), 1.0, atol=1e-12)
    # outward normals on the torus: away from the core circle
    p = S.vertices
    core = p.copy()
    core[:, 2] = 0
    core *= (1.0 / np.linalg.norm(core, axis=1))[:, None]
    assert np.all(np.einsum("ij,ij->i", fr[:, 2], p - core) > 0)
    a = rng.uniform(0, 2 * np.pi, S.n_vertices)
    e1 = S.regauge(a).frames[:, 0]
    expect = np.cos(a)[:, None] * fr[:, 0] + np.sin(a)[:, None] * fr[:, 1]
    np.testing.assert_allclose(e1, expect, atol=1e-12)


def test_torus_angle_defects_follow_gaussian_curvature():
    R, r = 1.0, 0.4
    S = mmp.meshes.torus(R, r, 96, 48)
    p = S.vertices
    v = np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1]) - R)
    K = np.cos(v) / (r * (R + r * np.cos(v)))
    Kd = S.angle_defects / S.vertex_areas
    assert np.abs(Kd - K).max() < 0.02 * np.abs(K).max()


@pytest.mark.parametrize("name", CLOSED_SHARED)
def test_holonomy_and_gauss_bonnet_on_shared_closed_meshes(name):
    S = mmp.Surface.load(shared_mesh(name))
    chi = S.euler_characteristic
    assert S.n_boundary_loops == 0
    expect = _wrap(S.rescaled_corner_angles.sum(axis=1) - np.pi)
    assert np.abs(_wrap(S.face_holonomy - expect)).max() < 1e-12
    assert abs(S.face_holonomy.sum() - 2 * np.pi * chi) < 1e-9 * max(1, S.n_faces / 1e4)
    assert abs(S.angle_defects.sum() - 2 * np.pi * chi) < 1e-8


def test_boot_is_genus_12():
    S = mmp.Surface.load(shared_mesh("boot.obj"))
    assert (S.genus, S.euler_characteristic) == (12, -22)
    assert abs(S.face_holonomy.sum() + 44 * np.pi) < 1e-9
