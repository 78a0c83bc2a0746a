"""Intrinsic Delaunay retriangulation by edge flips (Bobenko and Springborn 2007).

Why by hand: ``robust_laplacian`` returns only the Laplacian and mass matrix of its (tufted)
intrinsic Delaunay triangulation, and potpourri3d keeps its triangulation inside its solvers; the
heat method and the bundle operators of this library need the triangulation itself (faces and
edge lengths) to build gradients, connections and every type-``n`` operator on it.

The vertices and the metric of the surface are unchanged; only the edges change, so quantities
per vertex (heat, distances) are comparable one to one. On an intrinsic Delaunay triangulation
every cotan weight is non-negative: the scalar Laplacian is an M-matrix (maximum principle),
which is what the heat method needs on raw scans and badly shaped meshes.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from manifoldmp.errors import ParameterError
from manifoldmp.mesh.validate import validate_int

if TYPE_CHECKING:
    from manifoldmp.surface import Surface

__all__ = ["intrinsic_delaunay"]

log = logging.getLogger(__name__)


def _cot_opposite(o: float, a: float, b: float) -> float:
    """Cotangent of the angle opposite the side ``o`` in the triangle ``(o, a, b)``."""
    s = 0.5 * (o + a + b)
    area2 = s * (s - o) * (s - a) * (s - b)
    area = math.sqrt(area2) if area2 > 0 else 0.0
    if area == 0.0:
        return -math.inf if a * a + b * b - o * o < 0 else math.inf
    return (a * a + b * b - o * o) / (4.0 * area)


def _cot_opposite_array(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_cot_opposite` for arrays, the same operations in the same order (same bits)."""
    s = 0.5 * (o + a + b)
    area2 = s * (s - o) * (s - a) * (s - b)
    area = np.sqrt(np.where(area2 > 0, area2, 0.0))
    num = a * a + b * b - o * o
    with np.errstate(divide="ignore", invalid="ignore"):
        val = num / (4.0 * area)
    return np.where(area == 0.0, np.where(num < 0, -np.inf, np.inf), val)


def _non_delaunay(lengths: np.ndarray, twin: np.ndarray) -> np.ndarray:
    """Interior halfedges ``h < twin[h]`` whose edge fails the Delaunay test, all at once.

    Parameters
    ----------
    lengths : (3F,) ndarray
        Halfedge lengths, face after face.
    twin : (3F,) int ndarray
        Opposite halfedge, ``-1`` on the boundary.

    Returns
    -------
    (E',) int ndarray
        Ascending halfedge indices, with the test of the flip loop (``cot h + cot g`` below
        ``-1e-12 (1 + |cot h| + |cot g|)``, NaN included).
    """
    h = np.arange(lengths.size)
    nxt = h - h % 3 + (h + 1) % 3
    prv = h - h % 3 + (h + 2) % 3
    cot = _cot_opposite_array(lengths, lengths[nxt], lengths[prv])
    inner = np.flatnonzero(twin > h)
    ch, cg = cot[inner], cot[twin[inner]]
    with np.errstate(invalid="ignore"):
        ok = ch + cg >= -1e-12 * (1.0 + np.abs(ch) + np.abs(cg))
    return inner[~ok]


def intrinsic_delaunay(surface: Any, *, max_flips: int | None = None) -> Surface:
    """The intrinsic Delaunay triangulation of ``surface`` (same vertices, same metric).

    Lawson's algorithm on edge lengths: an interior edge whose two opposite angles sum to more
    than ``pi`` (negative cotan weight) is flipped, its quadrilateral is laid out in the plane
    and the new diagonal's length is measured there; the four edges around it are checked
    again. It terminates (Bobenko and Springborn, Discrete Comput. Geom. 38, 2007).

    Parameters
    ----------
    surface : Surface
        Embedded or intrinsic.
    max_flips : int, optional
        Stop after this many flips (default ``50 * edges``, far above what Lawson needs).

    Returns
    -------
    Surface
        An intrinsic surface (no embedding) on the same vertices: ``surface.n_vertices``,
        same vertex numbering, same total area and angle sums; its faces are new.

    Raises
    ------
    ParameterError
        ``surface`` is not a :class:`~manifoldmp.Surface`, has a transport twist, or
        ``max_flips`` is not an integer >= 0.

    Notes
    -----
    Flips that would join two vertices already joined by an edge, or a vertex to itself (an
    intrinsic triangulation may need such edges; :class:`Surface` cannot represent them), are
    skipped; the number of edges left non-Delaunay is logged (zero on the shared koala and
    face scan). Boundary edges are never flipped, so an obtuse angle opposite a boundary edge
    keeps its negative weight (robust_laplacian's tufted cover removes those too). The
    result is in the input's gauge: the tangent frame of every vertex is the input's (each
    halfedge carries a signpost, its direction in the input's frame, through the flips), so
    type-``n`` features, transported vectors and log maps computed on it are comparable with
    those computed on ``surface``.

    Examples
    --------
    >>> import manifoldmp as mmp
    >>> S = mmp.meshes.icosphere(2)            # already Delaunay
    >>> D = mmp.intrinsic_delaunay(S)
    >>> D.n_faces == S.n_faces, bool(abs(D.vertex_areas.sum() - S.vertex_areas.sum()) < 1e-12)
    (True, True)
    """
    from manifoldmp.surface import Surface  # at call time: surface imports geometry

    if not isinstance(surface, Surface):
        raise ParameterError(f"surface must be a Surface, got {type(surface).__name__}")
    F = surface.n_faces
    faces = np.asarray(surface.faces, dtype=np.int64).ravel().tolist()
    lengths = np.asarray(surface.halfedge_lengths, dtype=np.float64).ravel().tolist()
    twin = np.asarray(surface.twin, dtype=np.int64).tolist()
    if surface._twist is not None:
        raise ParameterError("a surface with a transport twist (flat bundle) cannot be "
                             "retriangulated: the twist lives on edges that flips remove")
    # signposts: the direction of each halfedge at its tail, as a true (unscaled) angle in the
    # input's frame; flips give new halfedges their direction from a neighbour plus a corner
    # angle, so the result can be put in the input's gauge (Sharp et al., "Navigating
    # intrinsic triangulations", 2019)
    full = np.where(surface.is_boundary_vertex, np.pi, 2.0 * np.pi)
    scale = full / np.maximum(surface.angle_sums, 1e-300)          # rescaled per true angle
    tails = np.asarray(surface.faces, dtype=np.int64).ravel()
    post = (np.asarray(surface.halfedge_angles).ravel() / scale[tails]).tolist()
    n_edges = int(np.count_nonzero(np.asarray(surface.twin) < 0)) + (3 * F) // 2
    limit = 50 * n_edges if max_flips is None else validate_int(max_flips, "max_flips",
                                                                 minimum=0)
    # edges as keys min * V + max (a set of tuples costs ten times more to build)
    nv = int(surface.n_vertices)
    fa = np.asarray(surface.faces, dtype=np.int64)
    ea, eb = fa.ravel(), np.roll(fa, -1, axis=1).ravel()
    edges = set((np.minimum(ea, eb) * nv + np.maximum(ea, eb)).tolist())

    def cot(h: int) -> float:
        b = h - h % 3
        return _cot_opposite(lengths[h], lengths[b + (h + 1) % 3], lengths[b + (h + 2) % 3])

    def delaunay(h: int) -> bool:
        g = twin[h]
        if g < 0:
            return True
        ch, cg = cot(h), cot(g)
        return ch + cg >= -1e-12 * (1.0 + abs(ch) + abs(cg))

    # only the edges that fail the test start in the queue; the others enter it when a flip
    # changes one of their triangles (the test is the same, vectorized: bit for bit)
    start = _non_delaunay(np.asarray(lengths), np.asarray(twin)).tolist()
    queue = deque(start)
    queued = [False] * (3 * F)
    for h in start:
        queued[h] = True
    flips = 0
    blocked: list[int] = []  # flips that would duplicate an edge; retried once that edge moved
    flips_at_retry = -1
    while flips < limit:
        if not queue:
            if not blocked or flips == flips_at_retry:
                break
            flips_at_retry = flips
            queue.extend(blocked)
            for e in blocked:
                queued[e] = True
            blocked = []
        h = queue.popleft()
        queued[h] = False
        g = twin[h]
        if g < 0 or delaunay(h):
            continue
        # face of h: (i, j, k) with h = i -> j; face of g: (j, i, l) with g = j -> i
        hn, hp, gn, gp = _nxt(h), _prv(h), _nxt(g), _prv(g)
        i, j, k, ll = faces[h], faces[hn], faces[hp], faces[gp]
        key = min(k, ll) * nv + max(k, ll)
        if k == ll or key in edges:
            blocked.append(h)
            continue
        l_ij, l_jk, l_ki = lengths[h], lengths[hn], lengths[hp]
        l_il, l_lj = lengths[gn], lengths[gp]
        # lay the quad out: i = (0, 0), j = (l_ij, 0), k above, l below
        kx = (l_ij * l_ij + l_ki * l_ki - l_jk * l_jk) / (2.0 * l_ij)
        ky = math.sqrt(max(l_ki * l_ki - kx * kx, 0.0))
        lx = (l_ij * l_ij + l_il * l_il - l_lj * l_lj) / (2.0 * l_ij)
        ly = -math.sqrt(max(l_il * l_il - lx * lx, 0.0))
        l_kl = math.hypot(kx - lx, ky - ly)
        # corner angles of the new triangles at k (from k -> i to k -> l) and at l (from
        # l -> j to l -> k): counter-clockwise, as the angular coordinates
        at_k = math.atan2(abs((-kx) * (ly - ky) - (-ky) * (lx - kx)),
                          (-kx) * (lx - kx) + (-ky) * (ly - ky))
        at_l = math.atan2(abs((l_ij - lx) * (ky - ly) - (-ly) * (kx - lx)),
                          (l_ij - lx) * (kx - lx) + (-ly) * (ky - ly))
        p_kl, p_lk = post[hp] + at_k, post[gp] + at_l
        p_lj, p_jk, p_ki, p_il = post[gp], post[hn], post[hp], post[gn]
        # outer halfedges and their twins, before the rewrite
        t_jk, t_ki, t_il, t_lj = twin[hn], twin[hp], twin[gn], twin[gp]
        fh, fg = h - h % 3, g - g % 3
        # face fh becomes (l, j, k): l -> j, j -> k, k -> l; face fg becomes (k, i, l)
        faces[fh:fh + 3] = [ll, j, k]
        lengths[fh:fh + 3] = [l_lj, l_jk, l_kl]
        post[fh:fh + 3] = [p_lj, p_jk, p_kl]
        faces[fg:fg + 3] = [k, i, ll]
        lengths[fg:fg + 3] = [l_ki, l_il, l_kl]
        post[fg:fg + 3] = [p_ki, p_il, p_lk]
        new_twins = ((fh, t_lj), (fh + 1, t_jk), (fg, t_ki), (fg + 1, t_il))
        for a, b in new_twins:
            twin[a] = b
            if b >= 0:
                twin[b] = a
        twin[fh + 2], twin[fg + 2] = fg + 2, fh + 2
        edges.discard(min(i, j) * nv + max(i, j))
        edges.add(key)
        flips += 1
        for a, _ in new_twins:
            e = a if twin[a] < 0 or twin[a] > a else twin[a]
            if not queued[e]:
                queued[e] = True
                queue.append(e)
    left = int(_non_delaunay(np.asarray(lengths), np.asarray(twin)).size)
    if flips >= limit and queue:
        log.warning("intrinsic_delaunay: stopped at max_flips=%d with %d edges queued", limit,
                    len(queue))
    log.info("intrinsic Delaunay: %d flips, %d edges left non-Delaunay (their flip would "
             "duplicate an edge)", flips, left)
    # the lengths are already mollified (a flip keeps the triangle inequalities)
    out = Surface.from_edge_lengths(np.asarray(faces, dtype=np.int64).reshape(F, 3),
                                    np.asarray(lengths).reshape(F, 3),
                                    n_vertices=surface.n_vertices, mollify_factor=0.0)
    if out.n_vertices != surface.n_vertices or not np.array_equal(
            np.asarray(out.faces).ravel(), np.asarray(faces)):  # pragma: no cover
        raise RuntimeError("the retriangulated surface was renumbered; please report")
    # the input's frames: rotate each vertex's frame so that every halfedge keeps the angular
    # coordinate its signpost gives (in rescaled units)
    want = np.asarray(post) * scale[np.asarray(faces)]
    have = np.asarray(out.halfedge_angles).ravel()
    theta = np.zeros(out.n_vertices)
    theta[np.asarray(faces)] = want - have     # the same value for every halfedge of a vertex
    return out.regauge(-theta)


def _nxt(h: int) -> int:
    return h - h % 3 + (h + 1) % 3


def _prv(h: int) -> int:
    return h - h % 3 + (h + 2) % 3
