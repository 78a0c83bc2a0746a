"""Heat-based applications: distances, transport, log map, Varadhan, signatures, heat trace."""

from __future__ import annotations

import numpy as np
import potpourri3d as pp3d
import pytest
import scipy.linalg as la

import manifoldmp as mmp
from manifoldmp.errors import ParameterError
from manifoldmp.spectral import (
    GeodesicSolver,
    heat_kernel_signature,
    heat_trace,
    varadhan_distance,
)
from tests.conftest import shared_mesh


def _great_circle(S: mmp.Surface | mmp.PointCloud, i: int) -> np.ndarray:
    x = np.asarray(S.vertices if hasattr(S, "vertices") else S.points)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.arccos(np.clip(x @ x[i], -1.0, 1.0))


@pytest.fixture(scope="module")
def spot() -> mmp.Surface:
    return mmp.Surface.load(shared_mesh("spot.obj"))


@pytest.mark.parametrize("which", ["icosphere", "spot"])
def test_heat_method_matches_potpourri3d(which: str, request: pytest.FixtureRequest) -> None:
    S = mmp.meshes.icosphere(4) if which == "icosphere" else request.getfixturevalue("spot")
    V, F = np.asarray(S.vertices), np.asarray(S.faces)
    ref = pp3d.MeshHeatMethodDistanceSolver(V, F, t_coef=1.0, use_robust=False)
    ours = GeodesicSolver(S, poisson_shift=1e-6)  # geometry-central's regularized Poisson step
    for src in (0, 7, [3, 11]):
        want = ref.compute_distance(src) if np.ndim(src) == 0 else \
            ref.compute_distance_multisource(src)
        np.testing.assert_allclose(ours.distance(src), want, atol=1e-6 * want.max())


def test_face_divergence_operators_match_the_per_face_formula() -> None:
    """The heat method's gradient and divergence as two cached sparse matrices (the fast path)
    against the formula evaluated face by face in the 3D embedding."""
    S = mmp.meshes.icosphere(3)
    rng = np.random.default_rng(0)
    V = np.asarray(S.vertices) + 0.03 * rng.standard_normal((S.n_vertices, 3))
    S = mmp.Surface(V, np.asarray(S.faces))
    F = np.asarray(S.faces)
    u = np.exp(-3.0 * rng.random(S.n_vertices))
    want = np.zeros(S.n_vertices)
    for f in range(F.shape[0]):
        p = V[F[f]]
        n = np.cross(p[1] - p[0], p[2] - p[0])
        area2 = np.linalg.norm(n)
        n /= area2
        g = sum(u[F[f, c]] * np.cross(n, p[(c + 2) % 3] - p[(c + 1) % 3]) for c in range(3))
        X = -g / np.linalg.norm(g)
        for c in range(3):
            c1, c2 = (c + 1) % 3, (c + 2) % 3
            e1, e2 = p[c1] - p[c], p[c2] - p[c]
            cot = lambda a, b: np.dot(a, b) / np.linalg.norm(np.cross(a, b))  # noqa: E731
            cot1 = cot(p[c] - p[c1], p[c2] - p[c1])   # angle at corner c1
            cot2 = cot(p[c] - p[c2], p[c1] - p[c2])   # angle at corner c2
            want[F[f, c]] += 0.5 * (cot2 * np.dot(e1, X) + cot1 * np.dot(e2, X))
    got = GeodesicSolver(S)._face_divergence_of_normalized_gradient(u)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_heat_method_distance_on_sphere_and_exact_poisson() -> None:
    S = mmp.meshes.icosphere(5)
    d = GeodesicSolver(S).distance(0)
    exact = _great_circle(S, 0)
    assert d[0] == 0.0
    assert np.max(np.abs(d - exact)) < 0.02  # heat method, t = h^2
    shifted = GeodesicSolver(S, poisson_shift=1e-6).distance(0)
    assert np.max(np.abs(shifted - d)) < 1e-3  # the regularization is a small perturbation


def test_heat_method_point_cloud() -> None:
    P = mmp.PointCloud(mmp.meshes.random_sphere(4000).vertices)
    d = GeodesicSolver(P).distance(0)
    exact = _great_circle(P, 0)
    far = exact > 0.3
    rel = np.abs(d - exact)[far] / exact[far]
    assert np.median(rel) < 0.03


def test_disconnected_components_get_inf() -> None:
    a = mmp.meshes.icosphere(2)
    V = np.vstack([a.vertices, a.vertices + 5.0])
    F = np.vstack([a.faces, a.faces + a.n_vertices])
    G = GeodesicSolver(mmp.Surface(V, F))
    d = G.distance(0)
    assert np.all(np.isfinite(d[:a.n_vertices])) and np.all(np.isinf(d[a.n_vertices:]))
    # the log map's modulus is the distance (inf off the source's component, never NaN);
    # nothing is transported to the other component
    with np.errstate(all="raise"):
        lg = G.log_map(0)
    assert not np.any(np.isnan(lg))
    np.testing.assert_allclose(np.abs(lg[:a.n_vertices]), d[:a.n_vertices], rtol=1e-12)
    assert np.all(np.isinf(lg[a.n_vertices:]))
    T = G.transport(0, 0.5j)
    np.testing.assert_allclose(np.abs(T[:a.n_vertices]), 0.5, rtol=1e-12)
    assert np.all(T[a.n_vertices:] == 0)


def test_normalized_heat_gradient_does_not_underflow() -> None:
    """Far from the source the heat is ~1e-160 and its squared gradient underflows; the unit
    field -grad u / |grad u| must not depend on the scale of u (it gave |X| ~ 1e138 and
    distances ~1e138 on a raw range scan)."""
    S = mmp.meshes.icosphere(3)
    G = GeodesicSolver(S)
    delta = np.zeros(S.n_vertices)
    delta[0] = 1.0
    u = G._heat_solve(0, delta)
    ref = G._face_divergence_of_normalized_gradient(u)
    for scale in (1e-160, 1e-300, 1e160):
        got = G._face_divergence_of_normalized_gradient(scale * u)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_heat_method_on_a_raw_range_scan() -> None:
    """17 components, holes, non-manifold vertices, negative cotan weights: distances stay
    finite on the source's component, inf elsewhere, and follow the exact geodesic distance
    (edge-flip geodesics of potpourri3d) to within the heat method's bias on such input."""
    S = mmp.Surface.load(shared_mesh("face_rangescan.ply"))
    V, F = np.asarray(S.vertices), np.asarray(S.faces)
    d = GeodesicSolver(S).distance(0)
    reached = np.isfinite(d)
    assert 0.9 * S.n_vertices < reached.sum() < S.n_vertices
    assert d[reached].min() > -1e-9 * d[reached].max()
    flip = pp3d.EdgeFlipGeodesicSolver(V, F)
    targets = np.random.default_rng(1).choice(np.flatnonzero(d > 0.2 * d[reached].max()), 8,
                                              replace=False)
    exact = np.array([np.linalg.norm(np.diff(flip.find_geodesic_path(0, int(j)), axis=0),
                                     axis=1).sum() for j in targets])
    rel = (d[targets] - exact) / exact
    assert np.all(np.abs(rel) < 0.15), rel   # measured: median -7 % (t = h^2, no iDT)
    # on the intrinsic Delaunay triangulation: median -1.5 %, worst -3.4 % (measured)
    di = GeodesicSolver(S, intrinsic_delaunay=True).distance(0)
    assert np.array_equal(np.isfinite(di), reached)
    rel_i = (di[targets] - exact) / exact
    assert np.all(np.abs(rel_i) < 0.05), rel_i
    assert np.median(np.abs(rel_i)) < 0.5 * np.median(np.abs(rel))


def test_intrinsic_delaunay_rescues_the_heat_method_on_a_bad_mesh() -> None:
    """The Loop-subdivided koala has 75k negative cotan weights: the plain heat method (ours
    and potpourri3d's use_robust=False alike) returns about half the geodesic distance, on the
    intrinsic Delaunay triangulation it is within a few percent (potpourri3d's use_robust=True
    does the same retriangulation, plus a mollification)."""
    S = mmp.Surface.load(shared_mesh("koala_loop200k.ply"))
    V, F = np.asarray(S.vertices), np.asarray(S.faces)
    plain = mmp.heat_method_distance(S, 0)
    robust = mmp.heat_method_distance(S, 0, intrinsic_delaunay=True)
    flip = pp3d.EdgeFlipGeodesicSolver(V, F)
    targets = np.random.default_rng(0).choice(S.n_vertices, 8, replace=False)
    exact = np.array([np.linalg.norm(np.diff(flip.find_geodesic_path(0, int(j)), axis=0),
                                     axis=1).sum() for j in targets])
    rel_plain = (plain[targets] - exact) / exact
    rel = (robust[targets] - exact) / exact
    assert np.median(rel_plain) < -0.3, rel_plain     # measured: median -54 %
    assert np.all(np.abs(rel) < 0.04), rel            # measured: worst 2.2 % of 40 targets
    ref = pp3d.MeshHeatMethodDistanceSolver(V, F, use_robust=True).compute_distance(0)
    assert np.abs(robust - ref).max() < 0.03 * ref.max()


@pytest.mark.parametrize("which", ["icosphere", "spot"])
def test_transport_matches_potpourri3d_up_to_gauge(which: str,
                                                   request: pytest.FixtureRequest) -> None:
    """Same numbers in, and the results differ by one unit factor per vertex (the frames)."""
    S = mmp.meshes.icosphere(4) if which == "icosphere" else request.getfixturevalue("spot")
    V, F = np.asarray(S.vertices), np.asarray(S.faces)
    ref = pp3d.MeshVectorHeatSolver(V, F, t_coef=1.0, use_intrinsic_delaunay=False)
    g = GeodesicSolver(S)
    src = 7
    ratios = []
    for vec in (1.0 + 0.5j, -0.3 + 1.0j):
        theirs = ref.transport_tangent_vector(src, [vec.real, vec.imag])
        ours = g.transport(src, vec)
        np.testing.assert_allclose(np.abs(ours), abs(vec), rtol=1e-12)
        ratios.append(ours / (theirs[:, 0] + 1j * theirs[:, 1]))
    away = _great_circle(S, src) < 2.8 if which == "icosphere" else slice(None)  # not the pole
    np.testing.assert_allclose(np.abs(ratios[0]), 1.0, atol=1e-10)
    np.testing.assert_allclose(ratios[0][away], ratios[1][away], atol=1e-9)
    # a conjugated (wrong) transport is not a gauge of theirs
    bad = np.conj(g.transport(src, 1.0 + 0.5j)) / ratios[0]
    assert np.max(np.abs(bad - ref.transport_tangent_vector(src, [1.0, 0.5]) @ [1, 1j])) > 0.1


@pytest.mark.parametrize("which", ["jittered", "spot"])
def test_transport_on_intrinsic_delaunay_matches_potpourri3d(which: str,
                                                             request: pytest.FixtureRequest
                                                             ) -> None:
    """potpourri3d's use_intrinsic_delaunay=True builds the same triangulation and keeps the
    input's vertex frames; so does ours. The per-vertex factor between their frames and ours is
    then the same with and without the retriangulation (a frame lost in the flips would show
    up as an O(1) angle)."""
    from tests.geometry.test_delaunay import _jittered_sphere

    S = _jittered_sphere(0) if which == "jittered" else request.getfixturevalue("spot")
    V, F = np.asarray(S.vertices), np.asarray(S.faces)
    factor = []
    for robust in (False, True):
        ref = pp3d.MeshVectorHeatSolver(V, F, t_coef=1.0, use_intrinsic_delaunay=robust)
        theirs = ref.transport_tangent_vector(7, [1.0, 0.5]) @ np.array([1, 1j])
        ours = GeodesicSolver(S, intrinsic_delaunay=robust).transport(7, 1.0 + 0.5j)
        factor.append(ours / theirs)
    np.testing.assert_allclose(np.abs(factor[1]), 1.0, atol=1e-10)
    np.testing.assert_allclose(factor[1], factor[0], atol=1e-10)  # measured: 7e-14


@pytest.mark.parametrize("domain", ["mesh", "cloud"])
def test_transport_is_parallel_transport_along_great_circles(domain: str) -> None:
    """Unit sphere: the vector heat method's transport from a source is the rotation about
    ``x_src x x`` by the geodesic distance (Rodrigues), read in the domain's frames."""
    S = mmp.meshes.icosphere(4)
    D = S if domain == "mesh" else mmp.PointCloud(S.vertices)
    x = np.asarray(S.vertices)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    fr = np.asarray(D.frames)
    src, v = 0, 1.0 + 0.5j
    u = GeodesicSolver(D).transport(src, v)
    v3 = v.real * fr[src, 0] + v.imag * fr[src, 1]
    axis = np.cross(x[src], x)
    sn = np.linalg.norm(axis, axis=1)
    d = np.arctan2(sn, x @ x[src])
    k = axis / np.maximum(sn, 1e-300)[:, None]
    w = (v3 * np.cos(d)[:, None] + np.cross(k, v3) * np.sin(d)[:, None]
         + k * (k @ v3)[:, None] * (1 - np.cos(d))[:, None])
    want = np.arctan2(np.einsum("ij,ij->i", w, fr[:, 1]), np.einsum("ij,ij->i", w, fr[:, 0]))
    ok = (d > 0.1) & (d < 2.5)      # away from the source and the antipode
    err = np.abs(np.angle(u * np.exp(-1j * want)))[ok]
    np.testing.assert_allclose(np.abs(u), abs(v), rtol=1e-12)
    assert err.max() < 0.02 and np.median(err) < 0.003, (err.max(), np.median(err))  # 5e-3, 1e-3


def test_factorizations_on_two_threads_give_the_same_bits(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A query that needs several factorizations builds them concurrently; one at a time (one
    CPU) it must give the same numbers bit for bit."""
    from manifoldmp.spectral import implicit

    S = mmp.meshes.jittered_sphere(3)
    both = GeodesicSolver(S)
    lm2, d2 = both.log_map(5), both.distance([1, 9])
    assert set(both._heat) == {0, 1} and both._poisson is not None
    monkeypatch.setattr(implicit.os, "cpu_count", lambda: 1)
    one = GeodesicSolver(S)
    np.testing.assert_array_equal(one.log_map(5), lm2)
    np.testing.assert_array_equal(one.distance([1, 9]), d2)


def test_transport_is_gauge_covariant(rng: np.random.Generator) -> None:
    S = mmp.meshes.jittered_sphere(3)
    alpha = rng.uniform(-np.pi, np.pi, S.n_vertices)
    a = GeodesicSolver(S).transport(5, 1.0 + 1.0j)
    b = GeodesicSolver(S.regauge(alpha)).transport(5, (1.0 + 1.0j) * np.exp(-1j * alpha[5]))
    np.testing.assert_allclose(b, np.exp(-1j * alpha) * a, atol=1e-10)


@pytest.mark.parametrize("domain", ["mesh", "cloud"])
def test_log_map_on_sphere(domain: str) -> None:
    S = mmp.meshes.icosphere(4)
    D = S if domain == "mesh" else mmp.PointCloud(S.vertices)
    lm = GeodesicSolver(D).log_map(0)
    x = np.asarray(S.vertices)
    d = _great_circle(S, 0)
    fr = np.asarray(D.frames)
    tang = x - np.outer(x @ x[0], x[0])
    ang = np.arctan2(tang @ fr[0, 1], tang @ fr[0, 0])
    ok = (d > 0.2) & (d < 2.5)
    # the point-cloud heat-method distance carries a near-constant offset (about 0.1 here)
    # from the least-squares gradient smearing the source over its 30 neighbours
    tol_r, tol_a = (0.03, 0.05) if domain == "mesh" else (0.15, 0.08)
    assert np.max(np.abs(np.abs(lm) - d)[ok]) < tol_r
    assert np.max(np.abs(np.angle(lm * np.exp(-1j * ang)))[ok]) < tol_a


def test_varadhan_on_icosphere5() -> None:
    S = mmp.meshes.icosphere(5)
    t = 35 * S.mean_edge_length ** 2
    d = varadhan_distance(S, 0, t)
    exact = _great_circle(S, 0)
    sel = (exact > 0.3) & (exact < 1.2)
    assert np.median(np.abs(d[sel] ** 2 - exact[sel] ** 2) / exact[sel] ** 2) < 0.05


@pytest.mark.parametrize("domain", ["mesh", "cloud"])
def test_hks_matches_dense_diagonal_and_heat_trace_matches_sphere_series(domain: str) -> None:
    if domain == "mesh":
        D, types, trace_tol = mmp.meshes.icosphere(3), (0, 1, 2), 0.02
    else:
        # the cloud Laplacian of 800 random points converges slowly: measured 6.5-6.8 % from
        # the unit sphere's series (a wrong mass or a missing n^2 shift is off by far more)
        D, types, trace_tol = mmp.PointCloud(mmp.meshes.random_sphere(800).vertices), (0, 2), 0.1
    m = D.vertex_areas
    for n in types:
        A = mmp.connection_laplacian(D, n).toarray() / m[:, None]
        hks = heat_kernel_signature(D, [0.05, 0.2], n=n)
        for j, t in enumerate((0.05, 0.2)):
            np.testing.assert_allclose(hks[:, j], np.real(np.diag(la.expm(-t * A))) / m,
                                       rtol=1e-9)
        # unit sphere: sum over l >= |n| of (2l + 1) exp(-t (l(l+1) - n^2))
        ls = np.arange(abs(n), 200)
        exact = np.sum((2 * ls + 1) * np.exp(-0.2 * (ls * (ls + 1) - n * n)))
        assert abs(heat_trace(D, 0.2, n=n)[0] / exact - 1) < trace_tol


def test_varadhan_on_a_point_cloud() -> None:
    # the icosphere(5) vertices as a cloud (its own Laplacian, no faces): measured 2.5 %
    S = mmp.meshes.icosphere(5)
    P = mmp.PointCloud(S.vertices)
    d = varadhan_distance(P, 0, 35 * S.mean_edge_length ** 2)
    exact = _great_circle(P, 0)
    sel = (exact > 0.3) & (exact < 1.2)
    assert np.median(np.abs(d[sel] ** 2 - exact[sel] ** 2) / exact[sel] ** 2) < 0.05


def test_bundle_hks_is_gauge_invariant(rng: np.random.Generator) -> None:
    S = mmp.meshes.jittered_sphere(2)
    alpha = rng.uniform(-np.pi, np.pi, S.n_vertices)
    a = heat_kernel_signature(S, [0.01, 0.1], n=2)
    b = heat_kernel_signature(S.regauge(alpha), [0.01, 0.1], n=2)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    assert np.all(a > 0)


def test_bad_arguments() -> None:
    S = mmp.meshes.icosphere(2)
    g = GeodesicSolver(S)
    with pytest.raises(ParameterError, match="outside"):
        g.distance(S.n_vertices)
    with pytest.raises(ParameterError, match="sources"):
        g.distance([])
    with pytest.raises(ParameterError, match="nonzero"):
        g.transport(0, 0.0)
    with pytest.raises(ParameterError, match="t_coef"):
        GeodesicSolver(S, t_coef=-1.0)
    with pytest.raises(ParameterError, match="times"):
        heat_kernel_signature(S, [-1.0])
