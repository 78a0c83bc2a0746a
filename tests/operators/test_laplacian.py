import numpy as np
import potpourri3d as pp3d
import pytest
import scipy.sparse.linalg as sla

import manifoldmp as mmp


def sphere_spectrum(n, k):
    out, l = [], abs(n)
    while len(out) < k:
        out += [l * (l + 1) - n * n] * (2 * l + 1)
        l += 1
    return np.array(out[:k], dtype=float)


def lowest(S, n, k):
    L = mmp.connection_laplacian(S, n)
    return np.sort(sla.eigsh(L, k=k, M=mmp.mass_matrix(S), sigma=-0.5, which="LM")[0])


def test_cotan_equals_potpourri3d():
    S = mmp.meshes.jittered_sphere(3)
    L0 = mmp.connection_laplacian(S, 0)
    Lp = pp3d.cotan_laplacian(S.vertices, S.faces)
    assert L0.dtype == np.float64
    assert abs(L0 - Lp).max() < 1e-12


def _face_holonomy_from_operator(L, L0, faces):
    """Holonomy of the transports read off ``L[i, j] = L0[i, j] exp(-1j rho_{i->j})``."""
    tot = np.ones(len(faces), dtype=complex)
    for c in range(3):
        i, j = faces[:, c], faces[:, (c + 1) % 3]
        r = np.asarray(L[i, j]).ravel() / np.asarray(L0[i, j]).ravel()
        tot *= np.conj(r)
    return np.angle(tot)


def test_type1_holonomy_matches_potpourri3d_not_conjugated():
    # potpourri3d flips to the intrinsic Delaunay triangulation by default, which changes the
    # edge set on non-Delaunay meshes; compare on the input triangulation
    S = mmp.meshes.jittered_sphere(3)
    L1 = mmp.connection_laplacian(S, 1)
    Lp = pp3d.MeshVectorHeatSolver(S.vertices, S.faces,
                                   use_intrinsic_delaunay=False).get_connection_laplacian()
    L0 = mmp.connection_laplacian(S, 0)
    assert np.all(np.abs(L0[L0.nonzero()]) > 1e-8)  # every face edge carries a weight
    ours = _face_holonomy_from_operator(L1, L0, S.faces)
    theirs = _face_holonomy_from_operator(Lp, pp3d.cotan_laplacian(S.vertices, S.faces), S.faces)
    d = np.angle(np.exp(1j * (ours - theirs)))
    assert np.abs(d).max() < 1e-10
    assert np.abs(np.angle(np.exp(1j * (ours - S.face_holonomy)))).max() < 1e-12
    # negative control: the conjugated convention has the opposite holonomy
    assert np.abs(np.angle(np.exp(1j * (-ours - theirs)))).max() > 1e-2


@pytest.mark.parametrize("n", [0, 1, 2, -3])
def test_gauge_covariance(n, rng):
    S = mmp.meshes.jittered_sphere(3)
    a = rng.uniform(0, 2 * np.pi, S.n_vertices)
    L = mmp.connection_laplacian(S, n).toarray()
    L2 = mmp.connection_laplacian(S.regauge(a), n).toarray()
    D = np.exp(-1j * n * a)
    assert np.abs(L2 - D[:, None] * L * np.conj(D)[None, :]).max() < 1e-12


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_hermitian_psd_and_constants(n):
    S = mmp.meshes.genus2()
    L = mmp.connection_laplacian(S, n)
    assert L.dtype == (np.float64 if n == 0 else np.complex128)
    assert abs(L - L.conj().T).max() < 1e-14
    ev = np.linalg.eigvalsh(L.toarray())
    assert ev.min() > -1e-10 * ev.max()
    if n == 0:
        assert np.abs(L @ np.ones(S.n_vertices)).max() < 1e-12
    else:
        assert ev.min() > 1e-6  # curved genus-2 surface: no parallel section


def test_weak_form_edge_sum_identity(rng):
    # u^* L_n u = sum_edges w_ij |u_i - r_ji^n u_j|^2 (THEORY 5.2)
    S = mmp.meshes.torus()
    n = 2
    u = rng.normal(size=S.n_vertices) + 1j * rng.normal(size=S.n_vertices)
    e = S.edges
    rho = S.edge_transport_angles
    i, j = e[:, 0], e[:, 1]  # rho_{i->j}; r_ji = exp(-1j rho_{i->j})
    energy = np.sum(S.cotan_weights * np.abs(u[i] - np.exp(-1j * n * rho) * u[j]) ** 2)
    quad = np.vdot(u, mmp.connection_laplacian(S, n) @ u)
    assert abs(quad.imag) < 1e-10 and abs(quad.real - energy) < 1e-10 * energy


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_icosphere5_spectrum(n):
    S = mmp.meshes.icosphere(5)
    assert S.n_vertices == 10242
    ev = lowest(S, n, 30)
    ex = sphere_spectrum(n, 30)
    nz = ex > 0
    assert np.all(np.abs(ev[nz] - ex[nz]) / ex[nz] < 5e-3)
    assert np.all(np.abs(ev[~nz]) < 1e-10)


def test_spectrum_converges_at_second_order():
    errs, hs = {n: [] for n in range(4)}, []
    for level in (3, 4, 5, 6):
        S = mmp.meshes.icosphere(level)
        hs.append(S.mean_edge_length)
        for n in range(4):
            ex = sphere_spectrum(n, 30)
            ev = lowest(S, n, 30)
            nz = ex > 0
            errs[n].append(np.max(np.abs(ev[nz] - ex[nz]) / ex[nz]))
    for n in range(4):
        order = np.polyfit(np.log(hs), np.log(errs[n]), 1)[0]
        assert 1.8 < order < 2.2, (n, order, errs[n])
        assert np.all(np.diff(errs[n]) < 0)


def test_casimir_shift_gives_scalar_spectrum():
    # L_n + n^2 M has spectrum l(l+1), l >= |n| (THEORY 2.3 / 6.2)
    S = mmp.meshes.icosphere(4)
    for n in (1, 2):
        ev = lowest_bundle = np.sort(sla.eigsh(mmp.bundle_laplacian(S, n, casimir=1.0), k=12,
                                               M=mmp.mass_matrix(S), sigma=-0.5)[0])
        ex = sphere_spectrum(n, 12) + n * n
        assert np.all(np.abs(ev - ex) / ex < 0.02)
        assert lowest_bundle[0] > n * (n + 1) * 0.98
    L = mmp.bundle_laplacian(S, 2, casimir=0.5)
    expect = mmp.connection_laplacian(S, 2) + 2.0 * mmp.mass_matrix(S)
    assert abs(L - expect).max() < 1e-15
    assert mmp.bundle_laplacian(S, 0, casimir=3.0).dtype == np.float64


def torus_exact(nx, ny, w, h, n=0, twist=(0.0, 0.0)):
    hx, hy = w / nx, h / ny
    p = np.arange(nx)[:, None]
    q = np.arange(ny)[None, :]
    lam = (4 / hx**2) * np.sin((2 * np.pi * p + n * twist[0]) / (2 * nx)) ** 2 + (
        4 / hy**2) * np.sin((2 * np.pi * q + n * twist[1]) / (2 * ny)) ** 2
    return np.sort(lam.ravel())


@pytest.mark.parametrize("n", [0, 1, 2, 3, -1])
def test_flat_torus_exact_spectrum(n):
    nx, ny, w, h = 12, 9, 1.3, 0.8
    S = mmp.meshes.flat_torus(nx, ny, width=w, height=h)
    L = mmp.connection_laplacian(S, n).toarray()
    m = mmp.mass_matrix(S).diagonal()
    ev = np.linalg.eigvalsh(L / np.sqrt(m[:, None] * m[None, :]))
    ex = torus_exact(nx, ny, w, h)
    assert np.abs(ev - ex).max() < 1e-10 * ex.max()


@pytest.mark.parametrize("n", [1, 2, -2])
def test_twisted_flat_bundle_exact_spectrum(n):
    nx, ny, w, h, tw = 10, 8, 1.0, 1.5, (0.7, -1.9)
    S = mmp.meshes.flat_torus(nx, ny, width=w, height=h, twist=tw)
    assert np.abs(S.face_holonomy).max() < 1e-12  # flat bundle
    L = mmp.connection_laplacian(S, n).toarray()
    m = mmp.mass_matrix(S).diagonal()
    ev = np.linalg.eigvalsh(L / np.sqrt(m[:, None] * m[None, :]))
    ex = torus_exact(nx, ny, w, h, n, tw)
    assert np.abs(ev - ex).max() < 1e-10 * ex.max()
    assert np.abs(ev - torus_exact(nx, ny, w, h)).max() > 1e-3  # the twist is visible


def test_mass_matrix_is_lumped_area():
    S = mmp.meshes.ellipsoid()
    M = mmp.mass_matrix(S)
    assert M.dtype == np.float64 and M.nnz == S.n_vertices
    np.testing.assert_allclose(M.diagonal(), S.vertex_areas)
    assert np.isclose(M.sum(), S.face_areas.sum())
