"""Point clouds: kNN neighbourhoods, consistently oriented PCA normals, frames and transport.

THEORY.md 1.7: weights and mass come from ``robust_laplacian.point_cloud_laplacian`` (Sharp &
Crane 2020: tufted cover + intrinsic Delaunay, so the weights are non-negative and ``L`` is PSD);
the transport of a pair is the minimal rotation taking one normal to the other, read in the two
tangent frames. Normals must be consistently oriented or the transport turns into a reflection,
which no phase can represent; PCA normals are therefore oriented by propagation over a minimum
spanning tree of the kNN graph (Hoppe et al. 1992) and then made outward per component.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from manifoldmp._cache import cached_quantity
from manifoldmp.errors import MeshError
from manifoldmp.geometry.frames import tangent_frames
from manifoldmp.mesh.validate import (
    validate_int,
    validate_positions,
    validate_positive,
    validate_vertex_array,
)

__all__ = ["PointCloud"]

logger = logging.getLogger(__name__)


def _rotate_min(v: np.ndarray, n_from: np.ndarray, n_to: np.ndarray) -> np.ndarray:
    """Apply the minimal rotation taking unit ``n_from`` to unit ``n_to`` to vectors ``v``.

    ``R v = c v + a x v + a (a . v) / (1 + c)`` with ``a = n_from x n_to``, ``c = n_from . n_to``
    (Rodrigues without normalizing the axis). Antiparallel normals (``c = -1``) are rotated by
    pi about an axis orthogonal to ``n_from``.
    """
    a = np.cross(n_from, n_to)
    c = np.einsum("ij,ij->i", n_from, n_to)
    bad = c < -1 + 1e-12
    denom = np.where(bad, 1.0, 1.0 + c)
    out = c[:, None] * v + np.cross(a, v) + a * (np.einsum("ij,ij->i", a, v) / denom)[:, None]
    if bad.any():
        axis = np.cross(n_from[bad], np.where(np.abs(n_from[bad, :1]) < 0.9, [[1.0, 0, 0]],
                                              [[0, 1.0, 0]]))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        vb = v[bad]
        out[bad] = 2 * np.einsum("ij,ij->i", axis, vb)[:, None] * axis - vb
    return out


class PointCloud:
    """A point cloud with the same operator interface as :class:`~manifoldmp.Surface`.

    Parameters
    ----------
    points : (N, 3) array_like
    normals : (N, 3) array_like, optional
        Consistently oriented normals. If omitted they are estimated by local PCA and oriented
        by minimum-spanning-tree propagation, then made outward per connected component.
    n_neighbors : int
        Neighbourhood size for normals, frames, the gradient and the robust Laplacian.
    mollify_factor : float
        Passed to ``robust_laplacian.point_cloud_laplacian``.

    Raises
    ------
    MeshError
        NaN/inf coordinates, wrong shapes, too few points, or zero-length normals.

    Examples
    --------
    >>> import numpy as np, manifoldmp as mmp
    >>> p = np.random.default_rng(0).normal(size=(500, 3))
    >>> P = mmp.PointCloud(p / np.linalg.norm(p, axis=1, keepdims=True))
    >>> bool((np.einsum("ij,ij->i", P.normals, P.points) > 0).all())  # outward
    True
    """

    def __init__(self, points: Any, normals: Any = None, *, n_neighbors: int = 30,
                 mollify_factor: float = 1e-5) -> None:
        p = validate_positions(points, "points", 3)
        self._k = validate_int(n_neighbors, "n_neighbors", minimum=3)
        if p.shape[0] <= self._k:
            raise MeshError(
                f"points has {p.shape[0]} rows; need more than n_neighbors = {self._k}"
            )
        self._mollify = validate_positive(mollify_factor, "mollify_factor", allow_zero=True)
        p.setflags(write=False)
        self._points = p
        self._given_normals = None
        if normals is not None:
            nrm = validate_positions(normals, "normals", 3)
            if nrm.shape[0] != p.shape[0]:
                raise MeshError(f"normals must have shape ({p.shape[0]}, 3), got {nrm.shape}")
            length = np.linalg.norm(nrm, axis=1)
            if np.any(length <= 1e-12):
                raise MeshError(f"normals[{int(np.argmin(length))}] has zero length")
            self._given_normals = nrm / length[:, None]
        self._gauge = np.zeros(p.shape[0])
        self._cache: dict[str, Any] = {}
        self._gcache: dict[str, Any] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> PointCloud:
        """Read points (the vertices of any file trimesh reads)."""
        import trimesh

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        try:
            obj = trimesh.load(path, process=False)
        except Exception as exc:
            raise MeshError(f"could not read points from {path!r}: {exc}") from exc
        return cls(np.asarray(obj.vertices), **kwargs)

    # ------------------------------------------------------------------ basics
    @property
    def points(self) -> np.ndarray:
        """(N, 3) ndarray: positions (read-only)."""
        return self._points

    vertices = points

    @property
    def n_vertices(self) -> int:
        """Number of points."""
        return int(self._points.shape[0])

    n_points = n_vertices

    @property
    def gauge(self) -> np.ndarray:
        """(N,) ndarray: accumulated frame rotation applied with :meth:`regauge`."""
        return self._gauge

    def __repr__(self) -> str:
        return f"PointCloud(N={self.n_vertices}, n_neighbors={self._k})"

    def regauge(self, alpha: Any) -> PointCloud:
        """Return the same cloud with every tangent frame rotated counter-clockwise by ``alpha``."""
        a = validate_vertex_array(alpha, self.n_vertices, "alpha")
        new = copy.copy(self)
        new._gcache = {}  # gauge-invariant ``_cache`` stays shared
        g = self._gauge + a
        g.setflags(write=False)
        new._gauge = g
        return new

    # ------------------------------------------------------------------ geometry
    @cached_quantity
    def neighbors(self) -> np.ndarray:
        """(N, k) ndarray of int64: the ``k`` nearest other points of each point."""
        tree = cKDTree(self._points)
        _, idx = tree.query(self._points, k=self._k + 1)
        idx = idx.astype(np.int64)
        own = idx == np.arange(self.n_vertices)[:, None]
        # drop the point itself (or the farthest one where duplicates hid it)
        drop = np.where(own.any(axis=1), own.argmax(axis=1), self._k)
        keep = np.ones_like(idx, dtype=bool)
        keep[np.arange(len(idx)), drop] = False
        return idx[keep].reshape(-1, self._k)

    @cached_quantity
    def normals(self) -> np.ndarray:
        """(N, 3) ndarray: unit normals, consistently oriented (outward per component)."""
        if self._given_normals is not None:
            return self._given_normals
        p, nb = self._points, self.neighbors
        d = p[nb] - p[:, None, :]  # (N, k, 3)
        cov = np.einsum("nki,nkj->nij", d, d)
        _, vec = np.linalg.eigh(cov)
        nrm = vec[:, :, 0]
        return self._orient(nrm)

    def _orient(self, nrm: np.ndarray) -> np.ndarray:
        n, nb = self.n_vertices, self.neighbors
        rows = np.repeat(np.arange(n), nb.shape[1])
        cols = nb.ravel()
        w = 1.0 - np.abs(np.einsum("ij,ij->i", nrm[rows], nrm[cols])) + 1e-9
        g = sp.coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
        g = g.maximum(g.T)
        tree = csgraph.minimum_spanning_tree(g)
        tree = tree + tree.T
        n_comp, comp = csgraph.connected_components(tree, directed=False)
        firsts = np.full(n_comp, n, dtype=np.int64)
        np.minimum.at(firsts, comp, np.arange(n))
        aug = sp.bmat([[tree, sp.coo_matrix((np.ones(n_comp), (firsts, np.zeros(n_comp))),
                                            shape=(n, 1))],
                       [None, sp.coo_matrix((1, 1))]], format="csr")
        aug = aug + aug.T
        _, pred = csgraph.breadth_first_order(aug, n, directed=False, return_predecessors=True)
        pred = pred[:n].astype(np.int64)
        child = np.flatnonzero(pred != n)
        ptr = np.arange(n, dtype=np.int64)
        ptr[child] = pred[child]
        flip = np.zeros(n, dtype=np.int8)
        flip[child] = np.einsum("ij,ij->i", nrm[child], nrm[pred[child]]) < 0
        for _ in range(int(np.ceil(np.log2(max(n, 2)))) + 1):
            flip ^= flip[ptr]
            ptr = ptr[ptr]
        nrm = np.where(flip[:, None].astype(bool), -nrm, nrm)
        # outward per component: normals point away from the component's centroid on average
        cen = np.stack([np.bincount(comp, self._points[:, k]) for k in range(3)], 1)
        cen /= np.bincount(comp)[:, None]
        score = np.bincount(comp, np.einsum("ij,ij->i", nrm, self._points - cen[comp]))
        return np.where((score < 0)[comp][:, None], -nrm, nrm)

    @cached_quantity(gauge=True)
    def frames(self) -> np.ndarray:
        """(N, 3, 3) ndarray: per-point frames ``(e1, e2, n)`` as rows.

        ``e1`` is the direction to the nearest neighbour projected onto the tangent plane,
        rotated by the gauge; ``e2 = n x e1``.
        """
        ref = self._points[self.neighbors[:, 0]] - self._points
        return tangent_frames(self.normals, ref, self._gauge, 1e-14)

    @cached_quantity
    def _robust(self) -> tuple[sp.csr_matrix, np.ndarray]:
        import robust_laplacian

        L, M = robust_laplacian.point_cloud_laplacian(
            np.asarray(self._points), mollify_factor=self._mollify, n_neighbors=self._k
        )
        L = sp.csr_matrix(L)
        L.sum_duplicates()
        L.sort_indices()
        return L, np.asarray(M.diagonal(), dtype=np.float64)

    @cached_quantity
    def vertex_areas(self) -> np.ndarray:
        """(N,) ndarray: lumped mass from the robust point-cloud Laplacian."""
        return self._robust[1]

    @cached_quantity
    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        U = sp.triu(self._robust[0], k=1).tocsr()
        U.sort_indices()
        rows = np.repeat(np.arange(self.n_vertices), np.diff(U.indptr))
        return rows.astype(np.int64), U.indices.astype(np.int64), -U.data

    @cached_quantity(gauge=True)
    def transport_angles(self) -> np.ndarray:
        """(P,) ndarray: ``rho_{i->j}`` for every Laplacian pair ``i < j`` (see :attr:`pairs`)."""
        i, j, _ = self._pairs
        fr = self.frames
        n = self.normals
        v = _rotate_min(fr[i, 0], n[i], n[j])  # e1_i carried to j
        x = np.einsum("ij,ij->i", v, fr[j, 0])
        y = np.einsum("ij,ij->i", v, fr[j, 1])
        return np.arctan2(y, x)

    @property
    def pairs(self) -> np.ndarray:
        """(P, 2) ndarray: the neighbour pairs ``i < j`` of the Laplacian stencil."""
        i, j, _ = self._pairs
        return np.stack([i, j], axis=1)

    @property
    def weights(self) -> np.ndarray:
        """(P,) ndarray: Laplacian weights ``w_ij = -L[i, j]`` of :attr:`pairs`."""
        return self._pairs[2]

    # ------------------------------------------------------------------ operator interface
    def _connection_data(self, angles: bool = True
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, bool]:
        """``(tail, tip, weight, rho, sorted)`` per Laplacian pair for operator assembly.

        With ``angles=False``, ``rho`` is ``None`` and no normal, orientation or transport is
        computed (the scalar Laplacian needs none of them).
        """
        i, j, w = self._pairs
        return i, j, w, self.transport_angles if angles else None, True

    def _mass(self) -> np.ndarray:
        return self.vertex_areas

    def _gradient_matrix(self) -> sp.csr_matrix:
        """Least-squares tangent gradient over the kNN neighbourhood."""
        nb = self.neighbors
        n, k = nb.shape
        fr = self.frames
        d = self._points[nb] - self._points[:, None, :]  # (N, k, 3)
        x = np.einsum("nki,ni->nk", d, fr[:, 0])
        y = np.einsum("nki,ni->nk", d, fr[:, 1])
        A = np.stack([np.stack([(x * x).sum(1), (x * y).sum(1)], -1),
                      np.stack([(x * y).sum(1), (y * y).sum(1)], -1)], -2)  # (N, 2, 2)
        det = np.linalg.det(A)
        scale = np.maximum(np.abs(A).max(axis=(1, 2)), 1e-300)
        if np.any(np.abs(det) < 1e-12 * scale**2):
            raise MeshError("a point neighbourhood is collinear; cannot fit a gradient there")
        Ainv = np.linalg.inv(A)
        cx = Ainv[:, 0, 0, None] * x + Ainv[:, 0, 1, None] * y  # (N, k)
        cy = Ainv[:, 1, 0, None] * x + Ainv[:, 1, 1, None] * y
        c = cx + 1j * cy
        rows = np.repeat(np.arange(n), k)
        G = sp.csr_matrix((c.ravel(), (rows, nb.ravel())), shape=(n, n))
        G = G - sp.diags(np.asarray(G.sum(axis=1)).ravel())
        return G.tocsr()
