"""Bundle heat flows on an :class:`~manifoldmp.operators.bundle.OperatorBundle` (pure torch).

Every function maps ``x : (V, C)`` features of one type ``n`` (real for ``n = 0``, complex
otherwise) and one time per channel ``t : (C,)`` to ``exp(-t (M^-1 L_n + kappa n^2)) x`` or
its time discretization (THEORY.md 3.1-3.3), differentiable in ``x`` and ``t``:

``spectral``   truncated eigenbasis of the bundle (exact on its span; autograd through it).
``krylov``     Lanczos on ``M^-1/2 L_n M^-1/2`` to a relative tolerance; the backward pass is
               a heat application (custom autograd). Fused kernels on the CPU as below.
``chebyshev``  Chebyshev expansion of the same flow with an a-priori degree (one sparse product
               per degree, no inner products); backward as for ``krylov``. On the CPU, inputs
               of at least 128 bytes per row (32 float32 channels; types ``n != 0`` from 32
               bytes, 4 complex64 channels) go through the fused kernels of
               :mod:`manifoldmp.spectral.fused` (:data:`FUSED`).
``implicit``   ``steps`` backward-Euler steps ``(M + tau L_n) u+ = M u``, each solved by
               Jacobi-preconditioned conjugate gradients with a separate ``tau`` per channel
               (a learned time per channel would need a factorization per channel; CG needs
               none and runs on any device); backward by the adjoint solve.
``explicit``   ``steps`` forward-Euler steps: one round of transported messages each
               (THEORY.md 3.1), stable for ``tau lambda_max <= 2``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from manifoldmp.errors import ManifoldmpError, ParameterError
from manifoldmp.operators.bundle import OperatorBundle
from manifoldmp.operators.sparse import column_real_dot
from manifoldmp.spectral.chebyshev import _fused_fits, heat_chebyshev
from manifoldmp.spectral.fused import FusedOperator, fused_available
from manifoldmp.spectral.krylov import heat_lanczos

__all__ = ["HEAT_METHODS", "heat_flow"]

log = logging.getLogger(__name__)

HEAT_METHODS = ("spectral", "krylov", "chebyshev", "implicit", "explicit")

#: The Chebyshev and Lanczos flows on the CPU use the fused kernels
#: (:mod:`manifoldmp.spectral.fused`) where the input is wide enough; ``False`` keeps torch's
#: sparse product (the tests compare). Layer-sized inputs (armadillo and boot, 15k-20k
#: vertices, 64 channels, float32 or float64), Chebyshev: 1.1-1.6x (type 0) and 1.9-3.7x
#: (type 1) faster per flow (benchmarks/bench_fused.py); Lanczos from 128 bytes per row:
#: 1.3-2.0x (benchmarks/README.md).
FUSED = True


class SolverNotConverged(ManifoldmpError):
    """An iterative solve of a layer did not reach its tolerance."""


def _spmm(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sparse ``A @ x`` with real ``A`` applied to complex ``x`` part by part."""
    if x.is_complex() and not A.is_complex():
        return torch.complex(A @ x.real.contiguous(), A @ x.imag.contiguous())
    return A @ x


class _SparseProduct(torch.autograd.Function):
    """``A @ x`` for a constant sparse ``A`` with a given (cached) adjoint ``A^H``.

    torch's own backward of a CSR product transposes and re-sorts ``A`` on every call.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, A: torch.Tensor, AH: torch.Tensor) -> torch.Tensor:
        ctx.AH = AH
        return _spmm(A, x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        return _spmm(ctx.AH, g), None, None


def sparse_product(A: torch.Tensor, x: torch.Tensor, AH: torch.Tensor) -> torch.Tensor:
    """``A @ x`` for a constant sparse ``A``, differentiable in ``x : (V, C)`` through ``AH``.

    ``AH`` is ``A^H`` (the bundles cache it: ``gradient_adjoint``, ``edge_operator_adjoint``).
    Real ``A`` with complex ``x`` is applied part by part.

    Parameters
    ----------
    A : (R, V) sparse Tensor
    x : (V, C) Tensor
    AH : (V, R) sparse Tensor

    Returns
    -------
    (R, C) Tensor
    """
    if not (isinstance(A, torch.Tensor) and isinstance(AH, torch.Tensor)
            and A.layout != torch.strided and AH.layout != torch.strided):
        raise ParameterError("A and AH must be sparse torch tensors")
    if AH.shape != (A.shape[1], A.shape[0]):
        raise ParameterError(f"AH must have shape {(A.shape[1], A.shape[0])} (A^H of A with "
                             f"shape {tuple(A.shape)}), got {tuple(AH.shape)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != A.shape[1]:
        raise ParameterError(f"x must be a ({A.shape[1]}, C) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    if x.dtype != A.dtype and not (x.is_complex() and x.real.dtype == A.dtype):
        raise ParameterError(f"x must have dtype {A.dtype} (or its complex type for a real A), "
                             f"got {x.dtype}")
    if torch.is_grad_enabled() and x.requires_grad:
        return _SparseProduct.apply(x, A, AH)
    return _spmm(A, x)


def _laplacian(ops: OperatorBundle, n: int, dtype: torch.dtype) -> torch.Tensor:
    L = ops.laplacian(n)
    want = dtype if (L.is_complex() == dtype.is_complex) else (
        torch.float32 if dtype == torch.complex64 else torch.float64)
    if L.dtype != want:
        key = ("L", n, want)
        if key not in ops._cache:
            ops._cache[key] = L.to(want)
        L = ops._cache[key]
    return L


def heat_spectral(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor
                  ) -> torch.Tensor:
    """``Phi diag(exp(-t lambda)) Phi^H M x`` with the bundle's type-``n`` eigenbasis."""
    if not ops.evals:
        raise ParameterError("spectral diffusion needs eigenpairs: precompute(..., k_eig > 0)")
    lam = ops.evals[n]
    # cached analysis Phi^H M (K, V) and synthesis Phi (V, K), in the features' dtype: two
    # matrix products per call and no elementwise pass over the (V, C) features
    key = ("spectral", n, x.dtype)
    if key not in ops._cache:
        phi = ops.evecs[n]
        ops._cache[key] = ((ops.mass[:, None] * phi).conj().T.contiguous().to(x.dtype),
                           phi.contiguous().to(x.dtype))
    analysis, synthesis = ops._cache[key]
    coef = analysis @ x                                             # (K, C)
    decay = torch.exp(-lam[:, None] * t[None, :])                   # (K, C)
    return synthesis @ (coef * decay)


class _Krylov(torch.autograd.Function):
    """Lanczos or Chebyshev heat flow; the backward pass is a heat flow of the same kind."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, ops: OperatorBundle, n: int,
                tol: float, method: str = "krylov") -> torch.Tensor:
        with torch.no_grad():
            y = _krylov_raw(ops, n, x, t, tol, method)
        ctx.ops, ctx.n, ctx.tol, ctx.method = ops, n, tol, method
        ctx.save_for_backward(y, t)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        y, t = ctx.saved_tensors
        ops, n = ctx.ops, ctx.n
        gx = gt = None
        with torch.no_grad():
            m = ops.mass[:, None].to(g.dtype)
            if ctx.needs_input_grad[0]:   # (exp(-tA))^H = M exp(-tA) M^-1
                gx = m * _krylov_raw(ops, n, g / m, t, ctx.tol, ctx.method)
            if ctx.needs_input_grad[1]:   # d/dt y = -A y
                Ay = _spmm(_laplacian(ops, n, y.dtype), y) / m
                gt = -column_real_dot(g, Ay).to(t.dtype)
        return gx, gt, None, None, None, None


def _krylov_raw(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor, tol: float,
                method: str = "krylov") -> torch.Tensor:
    key = ("sqrt_mass",)
    if key not in ops._cache:
        ops._cache[key] = ops.mass.sqrt()
    if method == "chebyshev":
        fused = _fused_operator(ops, n, x)

        def wide(x64: torch.Tensor) -> tuple[Any, ...]:   # the float64 redo of a float32 flow
            f64 = _fused_operator(ops, n, x64)
            return (ops.shifted_laplacian(n, torch.float64) if f64 is None else None,
                    ops._cache[key].double(), f64)

        y, _ = heat_chebyshev(ops.shifted_laplacian(n, x.dtype) if fused is None else None,
                              ops.spectral_bound(n), ops._cache[key], x, t, tol=tol,
                              wide=wide, fused=fused)
        return y
    fused = _fused_operator(ops, n, x)

    def wide_krylov(x64: torch.Tensor) -> tuple[Any, ...]:   # the float64 redo
        f64 = _fused_operator(ops, n, x64)
        return (ops.symmetric_laplacian(n, x64.dtype) if f64 is None else None,
                ops._cache[key].double(), f64)

    y, _ = heat_lanczos(ops.symmetric_laplacian(n, x.dtype) if fused is None else None,
                        ops._cache[key], x, t, tol=tol, wide=wide_krylov, fused=fused,
                        bound=ops.spectral_bound(n))
    return y


def _fused_operator(ops: OperatorBundle, n: int, x: torch.Tensor) -> FusedOperator | None:
    """``S_n`` of :meth:`OperatorBundle.shifted_laplacian` for the fused kernels, or None.

    None off the CPU, without numba, with :data:`FUSED` off, or for an input the kernels do not
    take or that is too narrow to gain (:func:`~manifoldmp.spectral.chebyshev._fused_fits`).
    Built once per type and precision from the float64 ``B_n`` and cached on the bundle.
    """
    if not (FUSED and x.device.type == "cpu" and fused_available()):
        return None
    real = np.dtype(np.float32 if x.dtype in (torch.float32, torch.complex64) else np.float64)
    key = ("fused", n, real.name)
    if key not in ops._cache:
        B = ops.symmetric_laplacian(n, torch.complex128 if ops.laplacian(n).is_complex()
                                    else torch.float64)
        Bs = sp.csr_matrix((B.values().numpy(), B.col_indices().numpy(),
                            B.crow_indices().numpy()), shape=tuple(B.shape))
        S = (4.0 / ops.spectral_bound(n)) * Bs - 2.0 * sp.identity(Bs.shape[0], format="csr")
        ops._cache[key] = FusedOperator.from_scipy(S, real)
    op = ops._cache[key]
    return op if _fused_fits(op, x) else None


def heat_krylov(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor, *,
                tol: float = 1e-8) -> torch.Tensor:
    """Lanczos heat flow to relative tolerance ``tol`` (backward: a heat flow)."""
    return _Krylov.apply(x, t, ops, n, tol, "krylov")


def heat_chebyshev_flow(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor, *,
                        tol: float = 1e-8) -> torch.Tensor:
    """Chebyshev heat flow, a-priori error bound ``tol`` on the output (backward: a heat flow)."""
    return _Krylov.apply(x, t, ops, n, tol, "chebyshev")


def _cg(ops: OperatorBundle, n: int, b: torch.Tensor, tau: torch.Tensor, tol: float
        ) -> torch.Tensor:
    """Solve ``(M + tau_c L_n) y_c = b_c`` for every column by preconditioned CG."""
    L = _laplacian(ops, n, b.dtype)
    m = ops.mass[:, None].to(b.dtype)
    tau_c = tau[None, :].to(b.dtype)
    diag = (ops.mass[:, None] * (1 + tau[None, :] * ops.degree()[:, None])).to(b.dtype)

    def A(v: torch.Tensor) -> torch.Tensor:
        return m * v + tau_c * _spmm(L, v)

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = (u.conj() * v).sum(dim=0)
        return p.real if p.is_complex() else p

    y = b / diag
    r = b - A(y)
    z = r / diag
    p = z.clone()
    rz = dot(r, z)
    bnorm = torch.linalg.vector_norm(b, dim=0).clamp_min(torch.finfo(ops.dtype).tiny)
    max_iter = 50 + 20 * int(math.sqrt(ops.n_vertices))
    for it in range(max_iter):
        active = torch.linalg.vector_norm(r, dim=0) > tol * bnorm
        if not bool(active.any()):
            log.debug("CG (type %d): %d iterations", n, it)
            return y
        Ap = A(p)
        pAp = dot(p, Ap)
        if bool((active & (pAp <= 0)).any()):
            raise SolverNotConverged(
                f"implicit diffusion of type {n}: M + tau L is not positive definite (negative "
                "Laplacian weights); use method='spectral' or 'krylov'")
        alpha = torch.where(pAp > 0, rz / pAp.clamp_min(torch.finfo(ops.dtype).tiny), 0.0)
        y = y + alpha.to(y.dtype) * p
        r = r - alpha.to(r.dtype) * Ap
        z = r / diag
        rz_new = dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(ops.dtype).tiny), 0.0)
        p = z + beta.to(p.dtype) * p
        rz = rz_new
    res = float((torch.linalg.vector_norm(r, dim=0) / bnorm).max())
    raise SolverNotConverged(
        f"implicit diffusion of type {n}: conjugate gradients reached relative residual "
        f"{res:.1e} > tol {tol:.1e} in {max_iter} iterations")


class _BackwardEuler(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tau: torch.Tensor, ops: OperatorBundle, n: int,
                tol: float) -> torch.Tensor:
        with torch.no_grad():
            y = _cg(ops, n, ops.mass[:, None].to(x.dtype) * x, tau, tol)
        ctx.ops, ctx.n, ctx.tol = ops, n, tol
        ctx.save_for_backward(y, tau)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        y, tau = ctx.saved_tensors
        ops, n = ctx.ops, ctx.n
        with torch.no_grad():
            u = _cg(ops, n, g, tau, ctx.tol)               # (M + tau L)^-1 g
            gx = ops.mass[:, None].to(g.dtype) * u if ctx.needs_input_grad[0] else None
            gt = None
            if ctx.needs_input_grad[1]:                    # dy/dtau = -(M + tau L)^-1 L y
                Ly = _spmm(_laplacian(ops, n, y.dtype), y)
                gt = -column_real_dot(u, Ly).to(tau.dtype)
        return gx, gt, None, None, None


def heat_implicit(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor, *,
                  steps: int = 1, tol: float = 1e-10) -> torch.Tensor:
    """``steps`` backward-Euler steps of size ``t / steps`` (unconditionally stable)."""
    tau = t / steps
    y = x
    for _ in range(steps):
        y = _BackwardEuler.apply(y, tau, ops, n, tol)
    return y


def heat_explicit(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor, *,
                  steps: int = 1) -> torch.Tensor:
    """``steps`` forward-Euler steps: ``u+ = u - tau (d/m) u + tau sum_j w_ij/m_i r_ji^n u_j``."""
    P, PH = ops.edge_operator(n, 0), ops.edge_operator_adjoint(n, 0)
    tau = (t / steps)[None, :]
    d = ops.degree()[:, None]
    y = x
    for _ in range(steps):
        y = y - tau * (d * y) + tau * sparse_product(P, y, PH)
    return y


def heat_flow(ops: OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor, *,
              method: str = "spectral", casimir: torch.Tensor | float = 0.0, steps: int = 1,
              tol: float | None = None) -> torch.Tensor:
    """Type-``n`` bundle heat flow of ``x`` for times ``t`` by ``method`` (module docstring).

    Parameters
    ----------
    ops : OperatorBundle
    n : int
    x : (V, C) Tensor
        Real for ``n = 0``, complex otherwise.
    t : (C,) Tensor
        Non-negative times (one per channel).
    method : {"spectral", "krylov", "chebyshev", "implicit", "explicit"}
    casimir : float or Tensor
        ``kappa``: the flow is multiplied by ``exp(-t kappa n^2)`` (exact for every method).
    steps : int
        Time steps of the implicit and explicit schemes.
    tol : float, optional
        Relative tolerance of Krylov, Chebyshev and CG (default ``1e-10`` in float64, ``1e-6``
        in float32).

    Returns
    -------
    (V, C) Tensor
    """
    if method not in HEAT_METHODS:
        raise ParameterError(f"method must be one of {HEAT_METHODS}, got {method!r}")
    ops.check_type(n)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != ops.n_vertices:
        raise ParameterError(f"x must be a (V, C) tensor with V = {ops.n_vertices}, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    if n != 0 and not x.is_complex():
        raise ParameterError(f"type-{n} features must be complex, got {x.dtype}")
    if not isinstance(t, torch.Tensor) or t.shape != (x.shape[1],):
        raise ParameterError(f"t must be a ({x.shape[1]},) tensor, one time per channel, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ParameterError(f"t must be finite and >= 0, got {t.detach().cpu().tolist()}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ParameterError(f"steps must be a positive integer, got {steps!r}")
    if tol is None:
        tol = 1e-6 if x.dtype in (torch.float32, torch.complex64) else 1e-10
    if method == "spectral":
        y = heat_spectral(ops, n, x, t)
    elif method == "krylov":
        y = heat_krylov(ops, n, x, t, tol=tol)
    elif method == "chebyshev":
        y = heat_chebyshev_flow(ops, n, x, t, tol=tol)
    elif method == "implicit":
        y = heat_implicit(ops, n, x, t, steps=steps, tol=tol)
    else:
        y = heat_explicit(ops, n, x, t, steps=steps)
    if n != 0:
        kap = torch.as_tensor(casimir, dtype=t.dtype, device=t.device)
        if kap.dim() or float(kap.detach()) != 0.0 or kap.requires_grad:
            y = y * torch.exp(-t * kap * n * n).to(y.dtype)[None, :]
    return y
