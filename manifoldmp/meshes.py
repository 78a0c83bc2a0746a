"""Procedural test surfaces with known geometry, and the meshes bundled with the project.

Generators return :class:`~manifoldmp.Surface` objects (outward, counter-clockwise faces):

* :func:`icosphere` (unit sphere, subdivision 8 = 655,362 vertices), :func:`uv_sphere`,
  :func:`jittered_sphere` and :func:`random_sphere` (irregular remeshings), :func:`ellipsoid`;
* :func:`torus` (embedded, Gaussian curvature ``cos v / (r (R + r cos v))``);
* :func:`flat_torus` (intrinsic periodic grid, optional twisted holonomy; THEORY.md 1.8);
* :func:`flat_grid` (planar rectangle, optional jitter), :func:`disk` (one boundary loop);
* :func:`genus2` (a closed genus-2 surface: the double of a plate with two holes).

:func:`names` and :func:`load` give the small meshes shipped in the top-level ``meshes/``
folder (all made by :func:`write_bundled` from these generators).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from manifoldmp.errors import MeshError, ParameterError
from manifoldmp.mesh.validate import validate_int, validate_positive
from manifoldmp.surface import Surface

__all__ = [
    "disk",
    "ellipsoid",
    "flat_grid",
    "flat_torus",
    "genus2",
    "icosphere",
    "jittered_sphere",
    "load",
    "names",
    "random_sphere",
    "torus",
    "uv_sphere",
    "write_bundled",
]


def _icosphere_arrays(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    v = np.asarray(m.vertices, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, np.asarray(m.faces, dtype=np.int64)


def icosphere(subdivisions: int = 3) -> Surface:
    """Unit icosphere: ``10 * 4**s + 2`` vertices on the unit sphere.

    Parameters
    ----------
    subdivisions : int
        Number of 4-to-1 subdivisions of the icosahedron (0 to 9).

    Examples
    --------
    >>> icosphere(3).n_vertices
    642
    """
    s = validate_int(subdivisions, "subdivisions", minimum=0, maximum=9)
    return Surface(*_icosphere_arrays(s))


def _orient_outward(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Flip faces whose normal points towards the origin (star-shaped closed surfaces)."""
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    inward = np.einsum("ij,ij->i", n, v[f].mean(axis=1)) < 0
    f = f.copy()
    f[inward] = f[inward][:, [0, 2, 1]]
    return f


def jittered_sphere(subdivisions: int = 3, amount: float = 0.3, seed: int = 0) -> Surface:
    """Icosphere with every vertex moved tangentially by up to ``amount`` edge lengths, reprojected.

    An irregular remeshing of the unit sphere with the icosphere's connectivity.
    """
    s = validate_int(subdivisions, "subdivisions", minimum=0, maximum=9)
    amount = validate_positive(amount, "amount", allow_zero=True)
    v, f = _icosphere_arrays(s)
    h = np.mean(np.linalg.norm(v[f[:, 0]] - v[f[:, 1]], axis=1))
    rng = np.random.default_rng(seed)
    d = rng.uniform(-1, 1, v.shape) * amount * h
    d -= np.einsum("ij,ij->i", d, v)[:, None] * v
    v = v + d
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return Surface(v, f)


def random_sphere(n_points: int = 2000, seed: int = 0) -> Surface:
    """Convex hull of ``n_points`` uniform random points on the unit sphere (Delaunay-like)."""
    from scipy.spatial import ConvexHull

    n = validate_int(n_points, "n_points", minimum=4)
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    hull = ConvexHull(p)
    return Surface(p, _orient_outward(p, np.asarray(hull.simplices, dtype=np.int64)))


def ellipsoid(axes: tuple[float, float, float] = (1.0, 0.8, 0.6), subdivisions: int = 3) -> Surface:
    """Icosphere scaled by ``axes`` along x, y, z."""
    a = np.asarray(axes, dtype=np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ParameterError(f"axes must be three positive numbers, got {axes!r}")
    v, f = _icosphere_arrays(validate_int(subdivisions, "subdivisions", minimum=0, maximum=9))
    return Surface(v * a, f)


def uv_sphere(n_lat: int = 16, n_lon: int = 32) -> Surface:
    """Latitude-longitude unit sphere with two pole vertices (``n_lat - 1`` rings)."""
    n_lat = validate_int(n_lat, "n_lat", minimum=2)
    n_lon = validate_int(n_lon, "n_lon", minimum=3)
    th = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1).reshape(-1, 3)
    v = np.vstack([[0, 0, 1.0], ring, [0, 0, -1.0]])
    idx = 1 + np.arange((n_lat - 1) * n_lon).reshape(n_lat - 1, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.zeros(n_lon, np.int64), idx[0], nxt[0]], 1)]
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    faces += [np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)]
    south = len(v) - 1
    faces.append(np.stack([np.full(n_lon, south), nxt[-1], idx[-1]], 1))
    f = np.vstack(faces).astype(np.int64)
    return Surface(v, _orient_outward(v, f))


def _grid_faces(nx: int, ny: int, index: np.ndarray,
                alt: np.ndarray | None = None) -> np.ndarray:
    """Two CCW triangles per cell of an ``index[(nx+1), (ny+1)]`` vertex grid (periodic-aware).

    Rows ``k`` and ``nx * ny + k`` are the two triangles of cell ``k`` (i-major order). Cells
    are split along ``v00-v11``, or along ``v10-v01`` where ``alt[i, j]`` is true.
    """
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    v00, v10 = index[i, j], index[i + 1, j]
    v01, v11 = index[i, j + 1], index[i + 1, j + 1]
    f1 = np.stack([v00, v10, v11], -1)
    f2 = np.stack([v00, v11, v01], -1)
    if alt is not None:
        f1 = np.where(alt[..., None], np.stack([v00, v10, v01], -1), f1)
        f2 = np.where(alt[..., None], np.stack([v10, v11, v01], -1), f2)
    return np.vstack([f1.reshape(-1, 3), f2.reshape(-1, 3)]).astype(np.int64)


def torus(major: float = 1.0, minor: float = 0.4, n_major: int = 48, n_minor: int = 24) -> Surface:
    """Embedded torus of revolution about the z axis.

    Parameterization ``((R + r cos v) cos u, (R + r cos v) sin u, r sin v)``; Gaussian
    curvature ``K = cos v / (r (R + r cos v))``, total curvature 0.
    """
    R = validate_positive(major, "major")
    r = validate_positive(minor, "minor")
    if r >= R:
        raise ParameterError(f"minor radius {r} must be smaller than major radius {R}")
    nu = validate_int(n_major, "n_major", minimum=3)
    nv = validate_int(n_minor, "n_minor", minimum=3)
    u = 2 * np.pi * np.arange(nu) / nu
    w = 2 * np.pi * np.arange(nv) / nv
    U, W = np.meshgrid(u, w, indexing="ij")
    v = np.stack([(R + r * np.cos(W)) * np.cos(U), (R + r * np.cos(W)) * np.sin(U),
                  r * np.sin(W)], -1).reshape(-1, 3)
    index = (np.arange(nu + 1)[:, None] % nu) * nv + (np.arange(nv + 1)[None, :] % nv)
    f = _grid_faces(nu, nv, index)
    # outward: the normal of (u, v) cells points along d/du x d/dv = outward for this layout
    return Surface(v, f)


def flat_torus(nx: int = 24, ny: int = 36, *, width: float = 1.0, height: float = 1.0,
               twist: tuple[float, float] = (0.0, 0.0)) -> Surface:
    """Intrinsic flat torus ``R^2 / (width Z x height Z)`` on an ``nx x ny`` periodic grid.

    Each cell is split by one diagonal; the mesh has no embedding (edge lengths only). All angle
    sums are exactly ``2 pi``, diagonal edges get weight 0, and the type-``n`` spectrum is exactly
    ``4/hx^2 sin^2((2 pi p + n t1) / (2 nx)) + 4/hy^2 sin^2((2 pi q + n t2) / (2 ny))``
    (THEORY.md 6.3), where ``(t1, t2) = twist`` is the holonomy of the flat bundle around the two
    generators (transport across the x seam in the +x direction is rotated by ``t1``).

    Parameters
    ----------
    nx, ny : int
        Cells per direction (at least 3, so that no two edges join the same vertices).
    width, height : float
    twist : (float, float)
    """
    nx = validate_int(nx, "nx", minimum=3)
    ny = validate_int(ny, "ny", minimum=3)
    hx = validate_positive(width, "width") / nx
    hy = validate_positive(height, "height") / ny
    t = np.asarray(twist, dtype=np.float64)
    if t.shape != (2,) or not np.all(np.isfinite(t)):
        raise ParameterError(f"twist must be two finite angles, got {twist!r}")
    index = (np.arange(nx + 1)[:, None] % nx) + nx * (np.arange(ny + 1)[None, :] % ny)
    f = _grid_faces(nx, ny, index)
    diag = float(np.hypot(hx, hy))
    nc = nx * ny
    lengths = np.empty((2 * nc, 3))
    lengths[:nc] = (hx, hy, diag)
    lengths[nc:] = (diag, hx, hy)
    S = Surface.from_edge_lengths(f, lengths, n_vertices=nx * ny)
    if np.any(t != 0):
        i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        i, j = i.ravel(), j.ravel()
        # unwrapped corner coordinates of the two triangles of each cell
        cx = np.stack([np.stack([i, i + 1, i + 1], 1), np.stack([i, i + 1, i], 1)]).reshape(-1, 3)
        cy = np.stack([np.stack([j, j, j + 1], 1), np.stack([j, j + 1, j + 1], 1)]).reshape(-1, 3)
        sx = cx[:, [1, 2, 0]] // nx - cx // nx
        sy = cy[:, [1, 2, 0]] // ny - cy // ny
        tw = t[0] * sx + t[1] * sy
        S = S.with_transport_twist(tw[S.face_origin])
    return S


def flat_grid(nx: int = 16, ny: int = 16, *, width: float = 1.0, height: float = 1.0,
              jitter: float = 0.0, seed: int = 0) -> Surface:
    """Planar rectangle in the z = 0 plane, triangulated grid, interior vertices jittered.

    Parameters
    ----------
    nx, ny : int
        Cells per direction.
    width, height : float
    jitter : float
        Interior vertices move uniformly by up to ``jitter`` cell sizes (keep it below 0.5 so
        that no triangle flips).
    seed : int
    """
    nx = validate_int(nx, "nx", minimum=1)
    ny = validate_int(ny, "ny", minimum=1)
    w = validate_positive(width, "width")
    h = validate_positive(height, "height")
    jitter = validate_positive(jitter, "jitter", allow_zero=True)
    x, y = np.meshgrid(np.linspace(0, w, nx + 1), np.linspace(0, h, ny + 1), indexing="ij")
    rng = np.random.default_rng(seed)
    inner = np.zeros_like(x, dtype=bool)
    inner[1:-1, 1:-1] = True
    x = x + inner * rng.uniform(-jitter, jitter, x.shape) * (w / nx)
    y = y + inner * rng.uniform(-jitter, jitter, y.shape) * (h / ny)
    v = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1)
    index = np.arange((nx + 1) * (ny + 1)).reshape(nx + 1, ny + 1)
    return Surface(v, _grid_faces(nx, ny, index))


def disk(n_rings: int = 12) -> Surface:
    """Unit disk in the z = 0 plane: concentric rings of ``6 k`` points, Delaunay triangulated."""
    from scipy.spatial import Delaunay

    n = validate_int(n_rings, "n_rings", minimum=1)
    pts = [np.zeros((1, 2))]
    for k in range(1, n + 1):
        a = 2 * np.pi * (np.arange(6 * k) + 0.5 * (k % 2)) / (6 * k)
        pts.append((k / n) * np.stack([np.cos(a), np.sin(a)], 1))
    p = np.vstack(pts)
    f = np.asarray(Delaunay(p).simplices, dtype=np.int64)
    e1, e2 = p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]]
    cw = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] < 0
    f[cw] = f[cw][:, [0, 2, 1]]
    return Surface(np.hstack([p, np.zeros((len(p), 1))]), f)


def genus2(resolution: int = 20, thickness: float = 0.25) -> Surface:
    """Closed genus-2 surface: the double of a 2 x 1 plate with two square holes.

    The plate is gridded with ``resolution`` cells per unit length; the top sheet sits at
    ``z = thickness * sqrt(d)`` and the bottom at ``-thickness * sqrt(d)``, ``d`` being the
    distance to the plate's boundary, where the sheets meet. Euler characteristic -2.
    """
    n = validate_int(resolution, "resolution", minimum=5)
    if n % 5:
        raise ParameterError(f"resolution must be a multiple of 5 (holes align), got {n}")
    th = validate_positive(thickness, "thickness")
    nx, ny = 2 * n, n
    cx = (np.arange(nx) + 0.5) / n
    cy = (np.arange(ny) + 0.5) / n
    CX, CY = np.meshgrid(cx, cy, indexing="ij")
    holes = [(0.5, 0.5), (1.5, 0.5)]
    half = 0.2
    keep = np.ones((nx, ny), dtype=bool)
    for hx, hy in holes:
        keep &= ~((np.abs(CX - hx) < half) & (np.abs(CY - hy) < half))
    pad = np.zeros((nx + 2, ny + 2), dtype=int)
    pad[1:-1, 1:-1] = keep
    count = pad[:-1, :-1] + pad[1:, :-1] + pad[:-1, 1:] + pad[1:, 1:]  # kept cells per vertex
    used = count > 0
    rim = used & (count < 4)
    X, Y = np.meshgrid(np.arange(nx + 1) / n, np.arange(ny + 1) / n, indexing="ij")
    d = np.minimum.reduce([X, 2.0 - X, Y, 1.0 - Y])
    for hx, hy in holes:
        dx = np.maximum(np.abs(X - hx) - half, 0)
        dy = np.maximum(np.abs(Y - hy) - half, 0)
        d = np.minimum(d, np.hypot(dx, dy))
    d[rim] = 0.0
    top = np.full(used.shape, -1, dtype=np.int64)
    top[used] = np.arange(int(used.sum()))
    interior = used & ~rim
    bot = top.copy()
    bot[interior] = top.max() + 1 + np.arange(int(interior.sum()))
    z = th * np.sqrt(d)
    v_top = np.stack([X[used], Y[used], z[used]], 1)
    v_bot = np.stack([X[interior], Y[interior], -z[interior]], 1)
    v = np.vstack([v_top, v_bot])
    # split cells so that no triangle has all three corners on the rim (it would be shared by
    # both sheets)
    alt = rim[:-1, :-1] & rim[1:, 1:]
    ft = _grid_faces(nx, ny, top, alt)
    fb = _grid_faces(nx, ny, bot, alt)[:, [0, 2, 1]]
    cell_keep = np.concatenate([keep.ravel(), keep.ravel()])
    f = np.vstack([ft[cell_keep], fb[cell_keep]])
    if (f < 0).any():  # pragma: no cover - construction invariant
        raise MeshError("internal error: genus2 grid produced an unused vertex")
    return Surface(v - v.mean(axis=0), f)


# ---------------------------------------------------------------------- bundled meshes
def _bundled_dir() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here / "_bundled_meshes", here.parent / "meshes"):
        if cand.is_dir() and any(cand.glob("*.obj")):
            return cand
    raise FileNotFoundError("the bundled meshes folder was not found next to the package")


_BUNDLED = {
    "genus2": lambda: genus2(20),
    "torus": lambda: torus(1.0, 0.4, 40, 20),
    "icosphere3": lambda: icosphere(3),
    "jittered_sphere": lambda: jittered_sphere(3, 0.3, seed=1),
    "disk": lambda: disk(12),
    "ellipsoid": lambda: ellipsoid((1.0, 0.8, 0.6), 3),
}


def names() -> list[str]:
    """Names of the meshes shipped in the top-level ``meshes/`` folder.

    Examples
    --------
    >>> "genus2" in names()
    True
    """
    return sorted(p.stem for p in _bundled_dir().glob("*.obj"))


def load(name: str) -> Surface:
    """Load a bundled mesh by name (see :func:`names`).

    Raises
    ------
    ParameterError
        Unknown name (the message lists the available ones).
    """
    avail = names()
    if name not in avail:
        raise ParameterError(f"unknown bundled mesh {name!r}; available: {avail}")
    return Surface.load(_bundled_dir() / f"{name}.obj", weld=False)


def write_bundled(folder: str | Path) -> list[Path]:
    """Regenerate the bundled meshes as OBJ files in ``folder`` (what ``meshes/`` holds)."""
    import trimesh

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, make in _BUNDLED.items():
        S = make()
        path = folder / f"{name}.obj"
        trimesh.Trimesh(S.vertices, S.faces, process=False).export(path, digits=12)
        out.append(path)
    return out
