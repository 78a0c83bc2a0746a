"""The user-facing triangle-mesh domain: connectivity, intrinsic and embedded geometry."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from manifoldmp._cache import cached_quantity
from manifoldmp.errors import MeshError, ParameterError
from manifoldmp.geometry.frames import tangent_frames, wrap_angle
from manifoldmp.geometry.intrinsic import (
    corner_angles,
    corner_cotans,
    corner_terms,
    face_areas,
    mollify_lengths,
)
from manifoldmp.mesh.connectivity import (
    Connectivity,
    build_connectivity,
    jump_rounds,
    pointer_jump_sum,
)
from manifoldmp.mesh.validate import (
    validate_faces,
    validate_halfedge_lengths,
    validate_positions,
    validate_positive,
    validate_vertex_array,
)

__all__ = ["Surface"]

logger = logging.getLogger(__name__)

_NEXT = np.array([1, 2, 0])


class Surface:
    """A triangle mesh with its intrinsic geometry, tangent gauge and discrete connection.

    Connectivity is cleaned on construction (see :mod:`manifoldmp.mesh.connectivity`): the
    vertices and faces of the surface may differ from the input where the input was defective,
    and :attr:`vertex_origin` / :attr:`face_origin` map them back. Every intrinsic quantity is
    derived from edge lengths only, lazily, cached and read-only.

    Parameters
    ----------
    vertices : (V, 3) array_like
        Vertex positions.
    faces : (F, 3) array_like of int
        Triangles, counter-clockwise seen from outside (orientation is repaired per piece if it
        is inconsistent).
    mollify_factor : float, optional
        Relative intrinsic mollification for degenerate triangles (see
        :func:`~manifoldmp.geometry.intrinsic.mollify_lengths`); 0 disables it.

    Raises
    ------
    MeshError
        NaN/inf coordinates, wrong shapes, out-of-range or negative indices, empty input, or no
        non-degenerate face.

    Examples
    --------
    >>> import manifoldmp as mmp
    >>> S = mmp.meshes.icosphere(2)
    >>> S.n_vertices, S.n_faces, S.euler_characteristic
    (162, 320, 2)
    >>> bool(abs(S.face_holonomy.sum() - 4 * np.pi) < 1e-12)
    True
    """

    def __init__(self, vertices: Any, faces: Any, *, mollify_factor: float = 1e-6) -> None:
        pos = validate_positions(vertices, "vertices", 3)
        f = validate_faces(faces, pos.shape[0])
        self._setup(f, pos.shape[0], positions=pos, lengths=None, mollify_factor=mollify_factor)

    def _setup(self, faces: np.ndarray, n_input_vertices: int, *, positions: np.ndarray | None,
               lengths: np.ndarray | None, mollify_factor: float) -> None:
        self._mollify_factor = validate_positive(mollify_factor, "mollify_factor", allow_zero=True)
        conn = build_connectivity(faces, n_input_vertices)
        self._conn: Connectivity = conn
        self._n_input_vertices = n_input_vertices
        if positions is not None:
            pos = positions[conn.vertex_origin]
            pos.setflags(write=False)
            self._positions: np.ndarray | None = pos
            lengths = None
        else:
            self._positions = None
            lengths = lengths[conn.face_origin]
            flipped = conn.face_flipped
            if flipped.any():
                # reversing (a, b, c) -> (a, c, b): edges ab, bc, ca become ac, cb, ba
                lengths = lengths.copy()
                lengths[flipped] = lengths[flipped][:, [2, 1, 0]]
        self._input_lengths = lengths
        self._gauge = np.zeros(conn.n_vertices)
        self._twist: np.ndarray | None = None
        self._cache: dict[str, Any] = {}
        self._gcache: dict[str, Any] = {}
        conn.faces.setflags(write=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edge_lengths(cls, faces: Any, edge_lengths: Any, *, n_vertices: int | None = None,
                          mollify_factor: float = 1e-6) -> Surface:
        """Build an intrinsic surface (no embedding) from faces and per-face edge lengths.

        Parameters
        ----------
        faces : (F, 3) array_like of int
        edge_lengths : (F, 3) array_like
            ``edge_lengths[f, c]`` is the length of the edge from ``faces[f, c]`` to
            ``faces[f, (c + 1) % 3]``; the two faces of an edge must agree on its length.
        n_vertices : int, optional
            Number of vertices (default: ``faces.max() + 1``).
        mollify_factor : float, optional

        Raises
        ------
        MeshError
            Bad shapes, non-positive or non-finite lengths, or two faces that disagree on the
            length of a shared edge.

        Examples
        --------
        >>> import manifoldmp as mmp
        >>> T = mmp.meshes.flat_torus(8, 6)
        >>> T.is_embedded, T.euler_characteristic
        (False, 0)
        """
        if n_vertices is None:
            arr = np.asarray(faces)
            if arr.size == 0:
                raise MeshError(f"faces is empty: shape {arr.shape}; need at least one triangle")
            n_vertices = int(np.max(arr)) + 1 if np.issubdtype(arr.dtype, np.number) else 0
        f = validate_faces(faces, int(n_vertices))
        lengths = validate_halfedge_lengths(edge_lengths, f.shape[0])
        self = cls.__new__(cls)
        self._setup(f, int(n_vertices), positions=None, lengths=lengths,
                    mollify_factor=mollify_factor)
        tw = self._conn.twin
        hl = self._input_lengths.ravel()
        has = tw >= 0
        bad = np.abs(hl[has] - hl[tw[has]]) > 1e-9 * np.maximum(hl[has], 1.0)
        if bad.any():
            h = int(np.flatnonzero(has)[np.argmax(bad)])
            i, j = self.faces.ravel()[h], self.faces[:, _NEXT].ravel()[h]
            raise MeshError(
                f"edge ({i}, {j}) has length {hl[h]} in face {h // 3} but {hl[tw[h]]} in face "
                f"{tw[h] // 3}; the faces of an edge must agree on its length"
            )
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, *, weld: bool = True,
             mollify_factor: float = 1e-6) -> Surface:
        """Read a mesh with trimesh (OBJ, OFF, PLY, STL, GLB, ...).

        Parameters
        ----------
        path : str or PathLike
        weld : bool, optional
            Merge vertices that share a position (UV/normal seams of OBJ files split them);
            unreferenced vertices are dropped either way (see :attr:`repairs`).
        mollify_factor : float, optional

        Raises
        ------
        MeshError
            The file holds no triangles (e.g. a point cloud) or cannot be parsed.
        FileNotFoundError
            ``path`` does not exist.
        """
        import trimesh

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        try:
            # materials are not needed; skipping them avoids decoding texture images
            mesh = trimesh.load(path, process=False, force="mesh", skip_materials=True)
        except Exception as exc:
            raise MeshError(f"could not read a triangle mesh from {path!r}: {exc}") from exc
        faces = getattr(mesh, "faces", None)
        if faces is None or len(faces) == 0:
            raise MeshError(f"{path!r} holds no triangles (a point cloud? use PointCloud.load)")
        if weld:
            mesh.merge_vertices(merge_tex=True, merge_norm=True)
        return cls(np.asarray(mesh.vertices), np.asarray(mesh.faces),
                   mollify_factor=mollify_factor)

    # ------------------------------------------------------------------ gauge
    def regauge(self, alpha: Any) -> Surface:
        """Return the same surface with every tangent frame rotated counter-clockwise.

        Parameters
        ----------
        alpha : (V,) array_like or float
            Rotation angle per vertex in radians (about the outward normal).

        Returns
        -------
        Surface
            Shares every gauge-invariant cached quantity with ``self``. Operators built from
            it satisfy ``L' = D L D^*`` with ``D = diag(exp(-1j * n * alpha))``.
        """
        a = validate_vertex_array(alpha, self.n_vertices, "alpha")
        return self._copy_with(_gauge=self._gauge + a)

    def with_transport_twist(self, twist: Any) -> Surface:
        """Return a copy whose connection has an extra rotation on each halfedge.

        Used for flat bundles with prescribed holonomy (THEORY.md 1.8): the transport angle
        of halfedge ``faces[f, c] -> faces[f, c + 1]`` becomes ``rho + twist[f, c]``.

        Parameters
        ----------
        twist : (F, 3) array_like
            Must be antisymmetric: the two halfedges of an interior edge carry opposite values.

        Raises
        ------
        MeshError
            Wrong shape, non-finite values, or a twist that is not antisymmetric.
        """
        t = validate_positions(twist, "twist", 3)
        if t.shape[0] != self.n_faces:
            raise MeshError(f"twist must have shape ({self.n_faces}, 3), got {t.shape}")
        tw = self._conn.twin
        flat = t.ravel()
        has = tw >= 0
        err = np.abs(wrap_angle(flat[has] + flat[tw[has]]))
        if err.size and err.max() > 1e-9:
            raise MeshError(
                f"twist is not antisymmetric: halfedges {int(np.flatnonzero(has)[err.argmax()])} "
                f"and its twin sum to {float(err.max())} (mod 2 pi); expected 0"
            )
        base = 0.0 if self._twist is None else self._twist
        return self._copy_with(_twist=base + t)

    def _copy_with(self, **attrs: Any) -> Surface:
        new = copy.copy(self)
        new._gcache = {}  # gauge-invariant ``_cache`` stays shared
        for k, v in attrs.items():
            if isinstance(v, np.ndarray):
                v.setflags(write=False)
            setattr(new, k, v)
        return new

    # ------------------------------------------------------------------ basic data
    @property
    def vertices(self) -> np.ndarray:
        """(V, 3) ndarray: vertex positions (read-only).

        Raises
        ------
        MeshError
            For an intrinsic surface (built from edge lengths), which has no positions.
        """
        if self._positions is None:
            raise MeshError("this Surface is intrinsic (built from edge lengths): no positions")
        return self._positions

    @property
    def faces(self) -> np.ndarray:
        """(F, 3) ndarray of int64: triangles over the cleaned vertices (read-only)."""
        return self._conn.faces

    @property
    def is_embedded(self) -> bool:
        """Whether the surface has vertex positions."""
        return self._positions is not None

    @property
    def n_vertices(self) -> int:
        """Number of vertices (after cleaning)."""
        return self._conn.n_vertices

    @property
    def n_faces(self) -> int:
        """Number of faces (after cleaning)."""
        return self._conn.n_faces

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return int(self.edges.shape[0])

    @property
    def gauge(self) -> np.ndarray:
        """(V,) ndarray: accumulated frame rotation applied with :meth:`regauge`."""
        return self._gauge

    @property
    def vertex_origin(self) -> np.ndarray:
        """(V,) ndarray of int64: input vertex index of each vertex."""
        return self._conn.vertex_origin

    @property
    def face_origin(self) -> np.ndarray:
        """(F,) ndarray of int64: input face row of each face."""
        return self._conn.face_origin

    @property
    def repairs(self) -> dict[str, int]:
        """Counts of the repairs applied to the input (all zero for a clean mesh)."""
        return dict(self._conn.repairs)

    @property
    def twin(self) -> np.ndarray:
        """(3F,) ndarray: opposite halfedge of ``3 f + c`` or ``-1`` on the boundary."""
        return self._conn.twin

    @property
    def mollified_by(self) -> float:
        """Length added to every edge by intrinsic mollification (0.0 if none)."""
        return self._mollified[1]

    def __repr__(self) -> str:
        kind = "embedded" if self.is_embedded else "intrinsic"
        return (f"Surface({kind}, V={self.n_vertices}, F={self.n_faces}, "
                f"chi={self.euler_characteristic})")

    # ------------------------------------------------------------------ combinatorics
    @cached_quantity
    def halfedge_tails(self) -> np.ndarray:
        """(3F,) ndarray: tail vertex of every halfedge."""
        return self.faces.ravel().copy()

    @cached_quantity
    def halfedge_tips(self) -> np.ndarray:
        """(3F,) ndarray: tip vertex of every halfedge."""
        return self.faces[:, _NEXT].ravel()

    @cached_quantity
    def edges(self) -> np.ndarray:
        """(E, 2) ndarray of int64: edges as (tail, tip) of a representative halfedge."""
        h = self._conn.edge_halfedge
        return np.stack([self.halfedge_tails[h], self.halfedge_tips[h]], axis=1)

    @property
    def halfedge_edge(self) -> np.ndarray:
        """(F, 3) ndarray: edge index of halfedge ``3 f + c``."""
        return self._conn.halfedge_edge.reshape(-1, 3)

    @cached_quantity
    def is_boundary_halfedge(self) -> np.ndarray:
        """(3F,) ndarray of bool: halfedges with no twin."""
        return self._conn.twin < 0

    @cached_quantity
    def is_boundary_vertex(self) -> np.ndarray:
        """(V,) ndarray of bool."""
        out = np.zeros(self.n_vertices, dtype=bool)
        out[self.halfedge_tails[self.is_boundary_halfedge]] = True
        return out

    @cached_quantity
    def vertex_components(self) -> np.ndarray:
        """(V,) ndarray of int64: connected-component label of each vertex."""
        e = self.edges
        g = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])),
                          shape=(self.n_vertices, self.n_vertices))
        return csgraph.connected_components(g, directed=False)[1].astype(np.int64)

    @property
    def n_components(self) -> int:
        """Number of connected components."""
        return int(self.vertex_components.max()) + 1

    @cached_quantity
    def boundary_loops(self) -> tuple[np.ndarray, ...]:
        """Boundary loops, each an ordered array of halfedge indices."""
        bh = np.flatnonzero(self.is_boundary_halfedge)
        if bh.size == 0:
            return ()
        # successor of a boundary halfedge (i->j): the boundary halfedge leaving j
        out_of = np.full(self.n_vertices, -1, dtype=np.int64)
        out_of[self.halfedge_tails[bh]] = bh
        succ = out_of[self.halfedge_tips[bh]]
        pos = np.full(self._conn.twin.size, -1, dtype=np.int64)
        pos[bh] = np.arange(bh.size)
        g = sp.coo_matrix((np.ones(bh.size), (np.arange(bh.size), pos[succ])),
                          shape=(bh.size, bh.size))
        n, lab = csgraph.connected_components(g, directed=False)
        loops = []
        for k in range(n):
            members = np.flatnonzero(lab == k)
            start = bh[members[0]]
            order = [start]
            h = succ[pos[start]]
            while h != start and len(order) <= members.size:
                order.append(h)
                h = succ[pos[h]]
            loops.append(np.asarray(order, dtype=np.int64))
        return tuple(loops)

    @property
    def n_boundary_loops(self) -> int:
        """Number of boundary loops."""
        return len(self.boundary_loops)

    @property
    def euler_characteristic(self) -> int:
        """``V - E + F``."""
        return self.n_vertices - self.n_edges + self.n_faces

    @property
    def genus(self) -> int:
        """Total genus ``(2 C - B - chi) / 2`` (sum over components; the mesh is oriented)."""
        return (2 * self.n_components - self.n_boundary_loops - self.euler_characteristic) // 2

    # ------------------------------------------------------------------ intrinsic geometry
    @cached_quantity
    def _mollified(self) -> tuple[np.ndarray, float]:
        if self._positions is not None:
            p = self._positions
            e = self.edges
            d = p[e[:, 1]] - p[e[:, 0]]
            l = np.sqrt(np.einsum("ij,ij->i", d, d))[self.halfedge_edge]
        else:
            l = self._input_lengths
        l2, eps = mollify_lengths(l, self._mollify_factor)
        if eps > 0:
            logger.warning("degenerate triangles: edge lengths mollified by %.3g "
                           "(intrinsic mollification, factor %.1g)", eps, self._mollify_factor)
        return l2, eps

    @property
    def halfedge_lengths(self) -> np.ndarray:
        """(F, 3) ndarray: length of the edge from corner ``c`` to ``c + 1`` (mollified)."""
        return self._mollified[0]

    @cached_quantity
    def edge_lengths(self) -> np.ndarray:
        """(E,) ndarray: edge lengths."""
        out = np.empty(self.n_edges)
        out[self.halfedge_edge.ravel()] = self.halfedge_lengths.ravel()
        return out

    @cached_quantity
    def mean_edge_length(self) -> float:
        """Mean edge length ``h`` (the scale for time steps ``t = t_coef * h**2``)."""
        return float(self.edge_lengths.mean())

    @cached_quantity
    def face_areas(self) -> np.ndarray:
        """(F,) ndarray: triangle areas (Heron, from edge lengths)."""
        return face_areas(self.halfedge_lengths)

    @cached_quantity
    def _corner_terms(self) -> np.ndarray:
        return corner_terms(self.halfedge_lengths)

    @cached_quantity
    def corner_angles(self) -> np.ndarray:
        """(F, 3) ndarray: interior angle at corner ``c`` of face ``f``."""
        return corner_angles(self.halfedge_lengths, self.face_areas, self._corner_terms)

    @cached_quantity
    def corner_cotans(self) -> np.ndarray:
        """(F, 3) ndarray: cotangent of each corner angle."""
        return corner_cotans(self.halfedge_lengths, self.face_areas, self._corner_terms)

    @cached_quantity
    def halfedge_cotan_weights(self) -> np.ndarray:
        """(F, 3) ndarray: half the cotangent opposite halfedge ``c`` (its share of ``w_ij``)."""
        return 0.5 * self.corner_cotans[:, [2, 0, 1]]

    @cached_quantity
    def cotan_weights(self) -> np.ndarray:
        """(E,) ndarray: cotan weights ``(cot alpha + cot beta) / 2`` (one term on the boundary)."""
        return np.bincount(self.halfedge_edge.ravel(), self.halfedge_cotan_weights.ravel(),
                           minlength=self.n_edges)

    @cached_quantity
    def vertex_areas(self) -> np.ndarray:
        """(V,) ndarray: lumped (barycentric) mass ``m_i = sum_f A_f / 3``."""
        return np.bincount(self.faces.ravel(), np.repeat(self.face_areas / 3.0, 3),
                           minlength=self.n_vertices)

    @cached_quantity
    def angle_sums(self) -> np.ndarray:
        """(V,) ndarray: ``Theta_i``, the sum of corner angles at each vertex."""
        return np.bincount(self.faces.ravel(), self.corner_angles.ravel(),
                           minlength=self.n_vertices)

    @cached_quantity
    def angle_defects(self) -> np.ndarray:
        """(V,) ndarray: ``2 pi - Theta_i`` (interior) or ``pi - Theta_i`` (boundary).

        On the boundary this is the turning (geodesic curvature); the sum is ``2 pi chi``
        (discrete Gauss-Bonnet).
        """
        full = np.where(self.is_boundary_vertex, np.pi, 2.0 * np.pi)
        return full - self.angle_sums

    @cached_quantity
    def rescaled_corner_angles(self) -> np.ndarray:
        """(F, 3) ndarray: angles times ``2 pi / Theta_i`` (``pi / Theta_i`` on the boundary)."""
        full = np.where(self.is_boundary_vertex, np.pi, 2.0 * np.pi)
        scale = full / np.maximum(self.angle_sums, 1e-300)
        return self.corner_angles * scale[self.faces]

    @cached_quantity
    def _jump_rounds(self) -> int:
        return jump_rounds(self.halfedge_tails, self.n_vertices)

    def _fan_prefix_sum(self, corner_values: np.ndarray) -> np.ndarray:
        """(F, 3): sum of ``corner_values`` over the corners preceding each one in its fan."""
        return pointer_jump_sum(self._conn.corner_prev, corner_values.ravel(),
                                self._jump_rounds).reshape(-1, 3)

    @cached_quantity
    def _corner_phi_start(self) -> np.ndarray:
        """Angular coordinate of each corner's start direction in the reference gauge."""
        return self._fan_prefix_sum(self.rescaled_corner_angles)

    @cached_quantity
    def _corner_phi_start_true(self) -> np.ndarray:
        """Like ``_corner_phi_start`` with true (unscaled) angles; used at boundary vertices."""
        return self._fan_prefix_sum(self.corner_angles)

    @cached_quantity(gauge=True)
    def halfedge_angles(self) -> np.ndarray:
        """(F, 3) ndarray: ``phi`` of halfedge ``faces[f,c] -> faces[f,c+1]`` in the tail's frame.

        The angular coordinate (THEORY.md 1.2): rescaled angles accumulated counter-clockwise
        from the vertex's reference halfedge, minus the gauge rotation.
        """
        return self._corner_phi_start - self._gauge[self.faces]

    @cached_quantity(gauge=True)
    def transport_angles(self) -> np.ndarray:
        """(F, 3) ndarray: ``rho`` of halfedge ``i -> j`` (carries frame-i coordinates to frame j).

        ``rho_{i->j} = phi_{j->i} - phi_{i->j} + pi`` wrapped to ``(-pi, pi]`` (THEORY.md 1.3),
        plus the optional flat-bundle twist.
        """
        phi = self.halfedge_angles
        phi_end = phi + self.rescaled_corner_angles  # direction of the corner's second edge
        rho = phi_end[:, _NEXT] - phi + np.pi
        if self._twist is not None:
            rho = rho + self._twist
        return wrap_angle(rho)

    @cached_quantity(gauge=True)
    def edge_transport_angles(self) -> np.ndarray:
        """(E,) ndarray: ``rho_{i->j}`` along each edge ``(i, j) = edges[e]``."""
        return self.transport_angles.ravel()[self._conn.edge_halfedge]

    @cached_quantity(gauge=True)
    def face_holonomy(self) -> np.ndarray:
        """(F,) ndarray: holonomy angle of the CCW loop around each face, in ``(-pi, pi]``.

        Equals ``sum of rescaled angles - pi`` (THEORY.md 1.6); gauge-invariant.
        """
        return wrap_angle(self.transport_angles.sum(axis=1))

    # ------------------------------------------------------------------ embedded geometry
    def _require_embedding(self, what: str) -> np.ndarray:
        if self._positions is None:
            raise MeshError(f"{what} needs vertex positions; this Surface is intrinsic")
        return self._positions

    @cached_quantity
    def face_normals(self) -> np.ndarray:
        """(F, 3) ndarray: unit face normals (zero for degenerate faces)."""
        p = self._require_embedding("face_normals")
        f = self.faces
        n = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        return np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)

    @cached_quantity
    def vertex_normals(self) -> np.ndarray:
        """(V, 3) ndarray: angle-weighted unit vertex normals."""
        fn = self.face_normals
        w = self.corner_angles
        out = np.zeros((self.n_vertices, 3))
        for k in range(3):
            out[:, k] = np.bincount(self.faces.ravel(), (fn[:, k : k + 1] * w).ravel(),
                                    minlength=self.n_vertices)
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        bad = norm[:, 0] <= 1e-300
        if bad.any():
            out[bad] = (0.0, 0.0, 1.0)
            norm[bad] = 1.0
        return out / norm

    @cached_quantity(gauge=True)
    def frames(self) -> np.ndarray:
        """(V, 3, 3) ndarray: per-vertex frames ``(e1, e2, n)`` as rows.

        ``e1`` is the reference halfedge projected onto the tangent plane, rotated
        counter-clockwise about ``n`` by the gauge; ``e2 = n x e1``. A tangent vector
        ``x e1 + y e2`` has type-1 coordinate ``x + iy``.
        """
        p = self._require_embedding("frames")
        root = np.flatnonzero(self._conn.corner_prev < 0)
        ref = np.zeros((self.n_vertices, 3))
        ref[self.halfedge_tails[root]] = p[self.halfedge_tips[root]] - p[self.halfedge_tails[root]]
        tol = 1e-14 * max(self.mean_edge_length, 1e-300)
        return tangent_frames(self.vertex_normals, ref, self._gauge, tol)

    # ------------------------------------------------------------------ operator interface
    def _connection_data(self, angles: bool = True
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, bool]:
        """``(tail, tip, weight, rho, sorted)`` per edge for operator assembly.

        ``sorted`` says that ``tail < tip`` and the pairs are in lexicographic order, unique.
        With ``angles=False``, ``rho`` is ``None`` and the transports are not computed.
        """
        e = self.edges
        rho = self.edge_transport_angles if angles else None
        if self._conn.edges_sorted:
            flip = e[:, 0] > e[:, 1]
            lo = np.where(flip, e[:, 1], e[:, 0])
            hi = np.where(flip, e[:, 0], e[:, 1])
            if rho is not None:
                rho = np.where(flip, -rho, rho)
            return lo, hi, self.cotan_weights, rho, True
        return e[:, 0], e[:, 1], self.cotan_weights, rho, False

    def _mass(self) -> np.ndarray:
        return self.vertex_areas

    def _gradient_matrix(self) -> sp.csr_matrix:
        from manifoldmp.operators.gradient import mesh_gradient_matrix

        return mesh_gradient_matrix(self)

    def check_index(self, i: Any, name: str = "vertex") -> int:
        """Validate a vertex index against this surface."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ParameterError(f"{name} must be an integer index, got {i!r}")
        if not 0 <= int(i) < self.n_vertices:
            raise ParameterError(f"{name} = {i} is outside [0, {self.n_vertices})")
        return int(i)
