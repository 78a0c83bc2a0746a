"""Tangent gradient (type 0 -> type 1) and its mass-adjoint divergence (type 1 -> type 0).

On a mesh the gradient at vertex ``i`` is the area-weighted mean of the gradients of the
linear interpolant on the faces around ``i``, each rotated from its face's flat layout into
the frame of ``i``. At an interior vertex the rotation maps the corner's bisector (true angle
``theta / 2`` from the corner's first edge) to its rescaled bisector (``phi + theta~ / 2``): it
is symmetric, independent of the reference edge, and exact where the angle sum is ``2 pi``. At a
boundary vertex the fan does not close, so true angles are accumulated from the boundary
reference edge (the frame of :attr:`Surface.frames`): exact at every boundary vertex of a flat
mesh, corners included. Only edge lengths are read, so intrinsic meshes work too.

On a point cloud it is the least-squares gradient of the first-order Taylor model over the kNN
neighbourhood in the tangent plane (exact for linear functions on planar clouds).

The divergence is minus the adjoint in the mass inner products ``<u, v> = sum m_i u_i v_i``
(scalars) and ``<X, Y> = sum m_i Re(conj(X_i) Y_i)`` (vectors): ``div = -M^-1 Re(G^H M .)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from manifoldmp.errors import ParameterError
from manifoldmp.operators.laplacian import _check_domain

__all__ = ["divergence", "divergence_matrix", "gradient", "gradient_matrix"]


def gradient_matrix(domain: Any) -> sp.csr_matrix:
    """Complex ``(V, V)`` matrix ``G``: ``(G u)_i = x + iy`` with ``grad u = x e1_i + y e2_i``.

    Parameters
    ----------
    domain : Surface or PointCloud

    Returns
    -------
    (V, V) scipy.sparse.csr_matrix of complex128
        Maps real scalars (type 0) to type-1 coordinates in the current gauge; under
        ``regauge(alpha)`` it becomes ``diag(exp(-1j alpha)) G``.

    Examples
    --------
    >>> import manifoldmp as mmp
    >>> S = mmp.meshes.flat_grid(6, 6)
    >>> g = mmp.gradient(S, S.vertices[:, 0])  # d/dx: unit vector along x
    >>> bool(np.allclose(np.abs(g), 1.0))
    True
    """
    _check_domain(domain)
    return domain._gradient_matrix()


def divergence_matrix(domain: Any) -> sp.csr_matrix:
    """Complex ``(V, V)`` matrix ``D = -M^-1 G^H M``; the divergence is ``(D @ X).real``.

    Returns
    -------
    (V, V) scipy.sparse.csr_matrix of complex128
    """
    G = gradient_matrix(domain)
    m = np.asarray(domain._mass(), dtype=np.float64)
    if np.any(m <= 0):
        raise ParameterError("divergence needs positive vertex masses; the domain has zero mass")
    minv = sp.diags(1.0 / m)
    return (-(minv @ G.conj().T @ sp.diags(m))).tocsr()


def _check_field(x: Any, n: int, name: str, complex_ok: bool) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise ParameterError(f"{name} must have shape ({n},) or ({n}, C), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ParameterError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr) and not complex_ok:
        raise ParameterError(f"{name} must be real (a type-0 field), got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ParameterError(f"{name} has non-finite entries")
    return arr


def gradient(domain: Any, u: Any) -> np.ndarray:
    """Tangent gradient of real scalars ``u : (V,) or (V, C)``; returns complex type-1 values."""
    G = gradient_matrix(domain)
    return G @ _check_field(u, domain.n_vertices, "u", complex_ok=False)


def divergence(domain: Any, x: Any) -> np.ndarray:
    """Divergence of type-1 fields ``x : (V,) or (V, C)`` complex; returns real scalars."""
    D = divergence_matrix(domain)
    return (D @ _check_field(x, domain.n_vertices, "x", complex_ok=True)).real


def mesh_gradient_matrix(surface: Any) -> sp.csr_matrix:
    """Assemble the face-averaged intrinsic gradient of a :class:`~manifoldmp.Surface`."""
    f = surface.faces
    l = surface.halfedge_lengths
    theta = surface.corner_angles
    theta_r = surface.rescaled_corner_angles
    phi = surface.halfedge_angles
    bnd = surface.is_boundary_vertex
    phi_true = surface._corner_phi_start_true - surface.gauge[f]
    m = surface.vertex_areas
    rows, cols, vals = [], [], []
    for c in range(3):
        i, j, k = f[:, c], f[:, (c + 1) % 3], f[:, (c + 2) % 3]
        pj = l[:, c].astype(np.complex128)  # j in the corner's layout
        pk = l[:, (c + 2) % 3] * np.exp(1j * theta[:, c])  # k in the corner's layout
        psi = np.where(bnd[i], phi_true[:, c], phi[:, c] + 0.5 * (theta_r[:, c] - theta[:, c]))
        # (A_f / 3) / m_i * e^{i psi} * i / (2 A_f) = e^{i psi} i / (6 m_i)
        s = np.exp(1j * psi) * 1j / (6.0 * np.maximum(m[i], 1e-300))
        rows += [i, i, i]
        cols += [i, j, k]
        vals += [s * (pk - pj), s * (-pk), s * pj]
    nv = surface.n_vertices
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nv, nv)
    )
