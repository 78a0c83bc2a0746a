"""Everything the layers need, in one frozen, device-movable, saveable object.

:func:`precompute` turns a :class:`~manifoldmp.Surface` or :class:`~manifoldmp.PointCloud` into
an :class:`OperatorBundle` of torch tensors (DESIGN.md section 3, replacing DiffusionNet's
seven-tuple): the lumped mass, the weak-form type-``n`` connection Laplacians ``L_0..L_N``
(sparse CSR, complex for ``n >= 1``), the tangent gradient, the truncated eigenbases of every
type, and the directed edge list of the message-passing form (weight, transport angle, edge
direction and length per edge). It is built in float64 on the CPU; :meth:`OperatorBundle.to`
moves and casts it explicitly.

Edge conventions (DESIGN.md section 1): ``edge_index[0]`` is the source ``j`` and
``edge_index[1]`` the target ``i``; ``transport[e] = rho_{j->i}`` carries frame-``j``
coordinates into frame ``i`` (``z -> exp(1j n rho) z`` for type ``n``); ``edge_angle[e]`` is the
direction of ``j`` seen from ``i`` in the frame of ``i`` (``phi_{i->j}``). With these,
``(L_n u)_i = sum_e w_e (u_i - exp(1j n rho_e) u_j)`` over edges with target ``i``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from manifoldmp.errors import ParameterError
from manifoldmp.mesh.validate import validate_int
from manifoldmp.operators.gradient import gradient_matrix
from manifoldmp.operators.laplacian import _check_domain, connection_laplacian
from manifoldmp.operators.sparse import complex_dtype

__all__ = ["OperatorBundle", "precompute"]

log = logging.getLogger(__name__)

SCHEMA = 1


def _csr(A: sp.spmatrix) -> torch.Tensor:
    A = A.tocsr()
    A.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                       torch.from_numpy(A.indices.astype(np.int64)),
                                       torch.from_numpy(np.ascontiguousarray(A.data)),
                                       size=A.shape)


def _adjoint_csr(A: torch.Tensor) -> torch.Tensor:
    """Conjugate transpose ``A^H`` of a sparse CSR tensor, as sorted CSR."""
    C = A.to_sparse_coo()
    AH = torch.sparse_coo_tensor(C.indices().flip(0), C.values().conj_physical(),
                                 (A.shape[1], A.shape[0]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return AH.coalesce().to_sparse_csr()


def _csr_parts(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    return T.crow_indices(), T.col_indices(), T.values(), list(T.shape)


def _csr_rows(crow: torch.Tensor) -> torch.Tensor:
    """Row index of every stored entry of a CSR matrix with row pointers ``crow``."""
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device),
                                   crow.diff())


def _csr_from(parts: Any) -> torch.Tensor:
    crow, col, val, shape = parts
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, size=tuple(shape))



@dataclass(frozen=True, eq=False)
class OperatorBundle:
    """Frozen bundle of geometric operators for the layers (build it with :func:`precompute`).

    Attributes
    ----------
    kind : str
        ``"surface"`` or ``"pointcloud"``.
    max_type : int
        Largest SO(2) type the bundle serves.
    mass : (V,) Tensor
        Lumped vertex areas ``m_i``.
    laplacians : tuple of (V, V) sparse CSR Tensor
        ``L_n`` for ``n = 0..max_type`` (real for 0, complex Hermitian otherwise).
    gradient : (V, V) sparse CSR Tensor
        Complex tangent gradient (type 0 -> type 1 coordinates).
    evals : tuple of (K_n,) Tensor
        Smallest generalized eigenvalues of ``(L_n, M)`` per type (empty when ``k_eig = 0``).
    evecs : tuple of (V, K_n) Tensor
        ``M``-orthonormal eigenvectors (real for type 0, complex otherwise).
    edge_index : (2, E) LongTensor
        Directed edges, row 0 the source ``j``, row 1 the target ``i`` (both directions).
    edge_weight : (E,) Tensor
        Laplacian weight ``w_ij`` (cotan or point-cloud).
    transport : (E,) Tensor
        ``rho_{j->i}`` (radians).
    edge_angle : (E,) Tensor
        ``phi_{i->j}``: direction of the edge towards ``j`` in the frame of ``i`` (radians;
        on meshes the rescaled angular coordinate inside, the true angle at boundary
        vertices).
    edge_length : (E,) Tensor
        Euclidean (mesh: intrinsic) length of the edge.
    faces : (F, 3) LongTensor
        Triangles (empty for point clouds), for face outputs.
    mean_edge_length : float
    spec : dict
        The arguments of :func:`precompute` that shaped the bundle.
    """

    kind: str
    max_type: int
    mass: torch.Tensor
    laplacians: tuple[torch.Tensor, ...]
    gradient: torch.Tensor
    evals: tuple[torch.Tensor, ...]
    evecs: tuple[torch.Tensor, ...]
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    transport: torch.Tensor
    edge_angle: torch.Tensor
    edge_length: torch.Tensor
    faces: torch.Tensor
    mean_edge_length: float
    spec: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ basics
    @property
    def n_vertices(self) -> int:
        """Number of vertices ``V``."""
        return int(self.mass.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of directed edges ``E``."""
        return int(self.edge_index.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Real dtype of the bundle."""
        return self.mass.dtype

    @property
    def device(self) -> torch.device:
        """Device of the bundle's tensors."""
        return self.mass.device

    @property
    def total_area(self) -> float:
        """``sum_i m_i``."""
        if "area" not in self._cache:
            self._cache["area"] = float(self.mass.sum())
        return self._cache["area"]

    @property
    def k_eig(self) -> int:
        """Number of eigenpairs per type (0 if none were computed)."""
        return int(self.evals[0].shape[0]) if self.evals else 0

    def __repr__(self) -> str:
        return (f"OperatorBundle(kind={self.kind!r}, V={self.n_vertices}, E={self.n_edges}, "
                f"max_type={self.max_type}, k_eig={self.k_eig}, dtype={self.dtype}, "
                f"device={self.device})")

    def check_type(self, n: int) -> None:
        """Raise unless type ``n`` is served by this bundle."""
        if not 0 <= n <= self.max_type:
            raise ParameterError(
                f"type {n} needs an OperatorBundle with max_type >= {n}; this one has "
                f"max_type = {self.max_type} (precompute(domain, max_type={n}))")

    def laplacian(self, n: int) -> torch.Tensor:
        """``L_n`` (sparse CSR)."""
        self.check_type(n)
        return self.laplacians[n]

    def symmetric_laplacian(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``B_n = M^-1/2 L_n M^-1/2`` (sparse CSR, cached per ``(n, dtype)``).

        The Hermitian form whose exponential the Krylov heat flow approximates
        (:func:`manifoldmp.spectral.krylov.heat_lanczos`). ``dtype`` defaults to that of
        ``L_n``; a complex ``dtype`` for ``n = 0`` gives the real operator in complex storage.
        """
        L = self.laplacian(n)
        dtype = L.dtype if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
            raise ParameterError(f"dtype must be a floating or complex torch dtype, got {dtype!r}")
        if L.is_complex() and not dtype.is_complex:
            raise ParameterError(f"L_{n} is complex; dtype must be complex, got {dtype}")
        key = ("B", n, dtype)
        if key not in self._cache:
            crow, col, val, shape = _csr_parts(L)
            row = _csr_rows(crow)
            s = self.mass.rsqrt()
            self._cache[key] = _csr_from((crow, col, (val * (s[row] * s[col])).to(dtype),
                                          shape))
        return self._cache[key]

    def spectral_bound(self, n: int) -> float:
        """Rigorous upper bound on ``lambda_max(M^-1 L_n)``, within a few percent of it.

        :func:`manifoldmp.spectral.chebyshev.spectrum_bound` on this bundle's ``L_n`` and
        masses (Collatz-Wielandt bounds of ``|M^-1/2 L_n M^-1/2|``, starting from the two
        Gershgorin bounds): the same value as :meth:`manifoldmp.HeatKernel.spectral_bound`.
        Computed once per type on the CPU, in float64.
        """
        key = ("bound", n)
        if key not in self._cache:
            from manifoldmp.spectral.chebyshev import spectrum_bound

            crow, col, val, shape = _csr_parts(self.laplacian(n))
            L = sp.csr_matrix((val.detach().cpu().numpy(), col.cpu().numpy(),
                               crow.cpu().numpy()), shape=tuple(shape))
            self._cache[key] = spectrum_bound(L, self.mass.detach().cpu().double().numpy())
        return self._cache[key]

    def shifted_laplacian(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``S_n = (4 / b) B_n - 2 I`` with ``b`` = :meth:`spectral_bound` (sparse CSR, cached).

        The operator of the Chebyshev recurrence
        (:func:`manifoldmp.spectral.chebyshev.heat_chebyshev`): it maps the spectrum of
        :meth:`symmetric_laplacian` into ``[-2, 2]``. Always real: ``(V, V)`` for a real
        ``L_n``, the ``(2V, 2V)`` stacked form ``[[Re S, -Im S], [Im S, Re S]]`` for a complex
        one (a real sparse product is faster than the complex one of the same data).
        ``dtype`` picks the precision (default the bundle's).
        """
        real = self.dtype if dtype is None else (
            torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64)
        key = ("S", n, real)
        if key not in self._cache:
            crow, col, val, shape = _csr_parts(self.symmetric_laplacian(n))
            V = shape[0]
            row = _csr_rows(crow)
            idx = torch.arange(V, device=crow.device)
            val = val * (4.0 / self.spectral_bound(n))
            rows, cols = torch.cat([row, idx]), torch.cat([col, idx])
            re = torch.cat([val.real if val.is_complex() else val,
                            torch.full((V,), -2.0, dtype=real, device=val.device)]).to(real)
            if val.is_complex():
                im = torch.cat([val.imag, torch.zeros(V, dtype=real, device=val.device)]).to(real)
                rows = torch.cat([rows, rows, rows + V, rows + V])
                cols = torch.cat([cols, cols + V, cols, cols + V])
                vals = torch.cat([re, -im, im, re])
                V2 = 2 * V
                # the imaginary part's structural zeros (its diagonal): fewer entries per product
                every = torch.ones_like(re, dtype=torch.bool)
                keep = torch.cat([every, im != 0, im != 0, every])
                rows, cols, vals = rows[keep], cols[keep], vals[keep]
            else:
                vals, V2 = re, V
            S = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (V2, V2)).coalesce()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._cache[key] = S.to_sparse_csr()
        return self._cache[key]

    def edge_operator(self, n: int, k: int = 0) -> torch.Tensor:
        """Sparse ``(V, V)`` messages ``P[i, j] = w_ij / m_i exp(1j (k phi_ij + n rho_ji))``.

        ``P @ u`` sums the neighbours' type-``n`` features transported into the frame of
        ``i``, weighted by the Laplacian weight and the angular kernel ``exp(1j k phi_{i->j})``;
        the result is of type ``n + k``. Cached per ``(n, k)``.
        """
        key = ("edge", n, k)
        if key not in self._cache:
            src, tgt = self.edge_index
            val = (self.edge_weight / self.mass[tgt]).to(complex_dtype(self.dtype))
            val = val * torch.exp(1j * (k * self.edge_angle + n * self.transport))
            if n == 0 and k == 0:
                val = val.real
            P = torch.sparse_coo_tensor(torch.stack([tgt, src]), val,
                                        (self.n_vertices, self.n_vertices)).coalesce()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._cache[key] = P.to_sparse_csr()
        return self._cache[key]

    def edge_operator_adjoint(self, n: int, k: int = 0) -> torch.Tensor:
        """``P^H`` of :meth:`edge_operator` (sparse CSR, cached): the backward of its product."""
        key = ("edgeH", n, k)
        if key not in self._cache:
            self._cache[key] = _adjoint_csr(self.edge_operator(n, k))
        return self._cache[key]

    def degree(self) -> torch.Tensor:
        """``(V,)`` ``d_i / m_i`` with ``d_i = sum_j w_ij`` (the diagonal of ``M^-1 L_n``)."""
        if "degree" not in self._cache:
            d = torch.zeros_like(self.mass).index_add_(0, self.edge_index[1], self.edge_weight)
            self._cache["degree"] = d / self.mass
        return self._cache["degree"]

    def gradient_adjoint(self) -> torch.Tensor:
        """``G^H`` (sparse CSR), for the divergence ``-M^-1 Re(G^H M X)``."""
        if "GH" not in self._cache:
            self._cache["GH"] = _adjoint_csr(self.gradient)
        return self._cache["GH"]

    # ------------------------------------------------------------------ conversion
    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> OperatorBundle:
        """A copy on ``device`` in real precision ``dtype`` (complex parts follow).

        Casting float64 -> float32 -> float64 loses precision; precompute again to recover it.
        """
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ParameterError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        real = dtype or self.dtype
        cplx = complex_dtype(real)

        def mv(t: torch.Tensor) -> torch.Tensor:
            if t.dtype in (torch.int64, torch.int32):
                return t.to(device=device)
            target = cplx if t.is_complex() else real
            if t.layout == torch.sparse_csr:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
                    return torch.sparse_csr_tensor(
                        t.crow_indices().to(device), t.col_indices().to(device),
                        t.values().to(device=device, dtype=target), size=t.shape)
            return t.to(device=device, dtype=target)

        kwargs = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "_cache":
                v = {}
            elif isinstance(v, torch.Tensor):
                v = mv(v)
            elif isinstance(v, tuple):
                v = tuple(mv(t) for t in v)
            kwargs[f.name] = v
        return OperatorBundle(**kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write the bundle with :func:`torch.save` (bit-exact round trip through :meth:`load`)."""
        state: dict[str, Any] = {"schema": SCHEMA}
        for f in dataclasses.fields(self):
            if f.name == "_cache":
                continue
            v = getattr(self, f.name)
            if f.name in ("laplacians",):
                v = [_csr_parts(t.cpu()) for t in v]
            elif f.name == "gradient":
                v = _csr_parts(v.cpu())
            elif isinstance(v, tuple):
                v = [t.cpu() for t in v]
            elif isinstance(v, torch.Tensor):
                v = v.cpu()
            state[f.name] = v
        torch.save(state, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: Any = None) -> OperatorBundle:
        """Read a bundle written by :meth:`save`."""
        try:
            state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises pickle/zip errors of several kinds
            raise ParameterError(f"{os.fspath(path)!r} is not an OperatorBundle file: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict) or state.get("schema") != SCHEMA:
            raise ParameterError(
                f"{os.fspath(path)!r} is not an OperatorBundle file of schema {SCHEMA}")
        state.pop("schema")
        state["laplacians"] = tuple(_csr_from(p) for p in state["laplacians"])
        state["gradient"] = _csr_from(state["gradient"])
        state["evals"] = tuple(state["evals"])
        state["evecs"] = tuple(state["evecs"])
        out = cls(**state)
        return out.to(device=device) if device is not None else out


# ---------------------------------------------------------------------- construction
def _directed_edges(domain: Any) -> tuple[np.ndarray, ...]:
    """``(src, tgt, w, rho_src_to_tgt, phi_tgt_to_src, length)`` over both directions."""
    tail, tip, w, rho, _ = domain._connection_data()
    src = np.concatenate([tip, tail])
    tgt = np.concatenate([tail, tip])
    ww = np.concatenate([w, w])
    # rho is rho_{tail->tip}; the edge (src=tip -> tgt=tail) carries rho_{tip->tail} = -rho
    trans = np.concatenate([-rho, rho])
    V = domain.n_vertices
    if hasattr(domain, "faces"):
        F = domain.faces
        # direction of f[c] -> f[c+1] at f[c]: rescaled angles inside (the fan closes at
        # 2 pi), true angles at boundary vertices (exact directions on flat patches)
        bnd = domain.is_boundary_vertex[F]
        phi = np.where(bnd, domain._corner_phi_start_true, domain._corner_phi_start) \
            - domain.gauge[F]
        theta = np.where(bnd, domain.corner_angles, domain.rescaled_corner_angles)
        a, b = F, np.roll(F, -1, axis=1)
        # in-face reverse halfedge b -> a: CCW at b from b -> f[c+2] by the corner angle at b
        phi_rev = np.roll(phi, -1, axis=1) + np.roll(theta, -1, axis=1)
        keys = np.concatenate([(a * V + b).ravel(), (b * V + a).ravel()])
        vals = np.concatenate([phi.ravel(), phi_rev.ravel()])
        keys, first = np.unique(keys, return_index=True)
        vals = vals[first]
        want = tgt.astype(np.int64) * V + src
        pos = np.searchsorted(keys, want)
        if np.any(pos >= len(keys)) or np.any(keys[np.minimum(pos, len(keys) - 1)] != want):
            raise ParameterError("internal: an operator edge is not an edge of the mesh")
        ang = np.mod(vals[pos], 2 * np.pi)
        # _connection_data lists the pairs in the order of Surface.edges
        length = np.concatenate([domain.edge_lengths] * 2)
    else:
        P = domain.points
        fr = domain.frames
        d = P[src] - P[tgt]
        ang = np.mod(np.arctan2(np.einsum("ij,ij->i", d, fr[tgt, 1]),
                                np.einsum("ij,ij->i", d, fr[tgt, 0])), 2 * np.pi)
        length = np.linalg.norm(d, axis=1)
    return src, tgt, ww, trans, ang, length


def _trim_cluster(lam: np.ndarray, k: int, rel: float = 1e-8) -> int:
    """Largest ``k' <= k`` that does not cut through a cluster of (near-)equal eigenvalues.

    Eigenvectors of a degenerate eigenvalue are defined only up to a unitary mixing; keeping a
    cluster only in part would make the truncated heat operator depend on the gauge.
    """
    if k >= len(lam):
        return k
    scale = max(float(np.abs(lam).max()), 1e-300)
    kk = k
    while kk > 1 and lam[kk] - lam[kk - 1] <= rel * scale:
        kk -= 1
    return kk


def precompute(domain: Any, *, max_type: int = 2, k_eig: int = 128, eig_tol: float = 1e-9,
               dtype: torch.dtype = torch.float64, device: Any = None,
               progress: bool | None = None) -> OperatorBundle:
    """Build the :class:`OperatorBundle` of ``domain`` for features of types ``0..max_type``.

    Parameters
    ----------
    domain : Surface or PointCloud
    max_type : int
        Largest SO(2) type the layers will use.
    k_eig : int
        Eigenpairs per type for the spectral diffusion (``0``: none; capped at ``V``; a
        trailing cluster of equal eigenvalues that the cut would split is dropped).
    eig_tol : float
        Residual target of :func:`~manifoldmp.spectral.eigen.generalized_eigsh`.
    dtype : torch.dtype
        Real precision of the returned tensors (built in float64, then cast).
    device : torch.device or str, optional
    progress : bool, optional
        Show a progress bar over the eigensolves (default: when ``V > 20000``).

    Returns
    -------
    OperatorBundle
    """
    from manifoldmp.spectral.eigen import DENSE_LIMIT, fill_reducing_ordering, generalized_eigsh

    _check_domain(domain)
    max_type = validate_int(max_type, "max_type", minimum=0)
    k_eig = validate_int(k_eig, "k_eig", minimum=0)
    V = domain.n_vertices
    m = np.asarray(domain._mass(), dtype=np.float64)
    if np.any(m <= 0):
        raise ParameterError("every vertex needs a positive mass; repair the mesh first")
    laps = [connection_laplacian(domain, n) for n in range(max_type + 1)]
    src, tgt, w, trans, ang, length = _directed_edges(domain)
    evals: list[torch.Tensor] = []
    evecs: list[torch.Tensor] = []
    if k_eig:
        k = min(k_eig, V)
        extra = min(8, V - k)
        show = V > 20000 if progress is None else progress
        # the types share L's pattern: one fill-reducing ordering for all their factorizations
        perm = fill_reducing_ordering(laps[0]) if max_type and V > DENSE_LIMIT else None
        for n in tqdm(range(max_type + 1), desc="eigenpairs", disable=not show):
            res = generalized_eigsh(laps[n], m, k + extra, tol=eig_tol, perm=perm)
            kk = _trim_cluster(res.eigenvalues, k)
            if kk < k:
                log.info("type %d: kept %d eigenpairs instead of %d (degenerate cluster at the "
                         "cut)", n, kk, k)
            evals.append(torch.from_numpy(np.ascontiguousarray(res.eigenvalues[:kk])))
            evecs.append(torch.from_numpy(np.ascontiguousarray(res.eigenvectors[:, :kk])))
    G = gradient_matrix(domain)
    h = float(np.mean(length)) if len(length) else 0.0
    bundle = OperatorBundle(
        kind="surface" if hasattr(domain, "faces") else "pointcloud",
        max_type=max_type,
        mass=torch.from_numpy(m.copy()),
        laplacians=tuple(_csr(L) for L in laps),
        gradient=_csr(G),
        evals=tuple(evals),
        evecs=tuple(evecs),
        edge_index=torch.from_numpy(np.stack([src, tgt]).astype(np.int64)),
        edge_weight=torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64)),
        transport=torch.from_numpy(np.ascontiguousarray(trans, dtype=np.float64)),
        edge_angle=torch.from_numpy(np.ascontiguousarray(ang, dtype=np.float64)),
        edge_length=torch.from_numpy(np.ascontiguousarray(length, dtype=np.float64)),
        faces=torch.from_numpy(np.array(domain.faces, dtype=np.int64)) if hasattr(
            domain, "faces") else torch.zeros((0, 3), dtype=torch.int64),
        mean_edge_length=h,
        spec={"max_type": max_type, "k_eig": k_eig, "eig_tol": eig_tol},
    )
    if dtype != torch.float64 or device is not None:
        bundle = bundle.to(device=device, dtype=dtype)
    return bundle
