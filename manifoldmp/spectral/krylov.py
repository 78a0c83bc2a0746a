"""Lanczos approximation of ``exp(-t B) z`` for a symmetric/Hermitian operator ``B``, in torch.

The heat semigroup of the pencil ``(L, M)`` with diagonal ``M`` is
``exp(-t M^-1 L) x = M^-1/2 exp(-t B) M^1/2 x`` with ``B = M^-1/2 L M^-1/2``, so it suffices to
approximate ``exp(-t B) z``. Every column ``z_c`` gets its own Krylov space (its own
tridiagonal ``T_c``), and all columns advance together: one step is one sparse product with a
``(V, C)`` block. The columns may carry different times ``t_c``.

Stopping rule: every ``max(check_every, m / 16)`` steps (``m`` the steps so far: a check costs
an eigendecomposition of the ``m x m`` tridiagonals, so a fixed spacing made the checks
``O(m^4)`` in all, 137 of 144 s at ``m = 922``; at long times only the few Ritz values near
the smallest are computed, :func:`_expm_tridiag`) the error of column ``c`` is estimated, for the
first two checks, by Saad's ``||z_c|| * beta_m * |e_m^T exp(-t_c T_m) e_1|`` (Saad 1992,
"Analysis of some Krylov subspace approximations to the matrix exponential operator",
eq. 4.14), and from then on by the change
``d = ||y_m - y_p||`` since the previous check, inflated to ``d r / (1 - r)`` when ``r``, the
ratio per check of a least-squares trend of ``log d`` over the last ``max(3, checks / 4)``
changes, exceeds 1/2 (and doubled for safety). ``d`` estimates the error of the older ``y_p``,
which overestimates that of ``y_m`` when convergence is fast; when the errors shrink slowly
(``r > 1/2``, long times) geometric decay leaves ``d r / (1 - r)`` still to come, and ``d``
alone stopped early. A trend
rather than the last ratio, because where convergence is slow the ratio of two successive
changes is noise (it ranged from 0.07 to 8.5 while the error fell 1 % per step). Saad's
estimate is not used once the changes are available: it is the residual of the ODE, not the
error; it overestimates by up to five orders of magnitude at short times and underestimates
by up to 20x at long times (the slowest mode propagates its residual undamped), and taking
the smaller of the two stopped early there. Changes at the rounding floor (``100 eps`` in the
scaled coefficients) count as converged: a ``tol`` below working precision (1e-6 in float32)
ends there with a logged message and the estimate in ``KrylovInfo.error_estimate``.
Iteration stops when every estimate is at most ``tol * ||y_c||`` with ``y_c`` the current
approximation (a relative tolerance on the output, in the ``M``-norm of the original problem).
No re-orthogonalization is done: for functions like the exponential the Lanczos approximation
keeps its accuracy when orthogonality is lost (Druskin, Greenbaum and Knizhnerman 1998).
No dense ``V x V`` matrix is ever formed.

Memory: the basis is kept (``m`` blocks of ``(V, C)``) while it fits in ``max_basis_bytes``;
beyond that the method runs a second Lanczos pass that regenerates the basis instead of storing
it (twice the products, three blocks of memory, recycled when ``apply_B`` writes into a given
block). Column reductions go through a cache-sized buffer (CPU) or one reused workspace (CUDA).

On the CPU, :func:`lanczos_expm_fused` runs the same iteration and stopping rule on the fused
kernels of :mod:`~manifoldmp.spectral.fused` (two passes over memory per step instead of about
fourteen through torch; the second pass two steps per pass): 100k-vertex torus, 64 complex
channels, ``t = 1e-3``: 1.7 s against 5.0 s (benchmarks/README.md).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import lapack

from manifoldmp.errors import ManifoldmpError, ParameterError
from manifoldmp.mesh.validate import validate_int, validate_positive
from manifoldmp.operators.sparse import column_real_dot
from manifoldmp.spectral.chebyshev import FLOAT32_ACCURACY, _fused_fits
from manifoldmp.spectral.fused import FusedLanczos, FusedOperator, check_block

__all__ = ["KrylovInfo", "KrylovNotConverged", "lanczos_expm", "lanczos_expm_fused"]
# csr_product and heat_lanczos are internal: HeatKernel and nn.heat_flow call them after
# validating their arguments

log = logging.getLogger(__name__)


class KrylovNotConverged(ManifoldmpError):
    """The Lanczos iteration reached ``max_steps`` before meeting its tolerance."""


@dataclass(frozen=True)
class KrylovInfo:
    """What one call of :func:`lanczos_expm` did.

    Attributes
    ----------
    steps : int
        Lanczos steps (sparse block products) of the first pass.
    products : int
        Total sparse block products (``2 * steps`` when the basis was regenerated).
    error_estimate : float
        Largest relative error estimate over the columns at exit.
    stored_basis : bool
        Whether the basis was kept in memory (one pass) or regenerated (two passes).
    """

    steps: int
    products: int
    error_estimate: float
    stored_basis: bool


#: Ritz values with ``exp(-t (theta - theta_min)) < exp(-EXP_CUT)`` are left out of
#: ``exp(-t T) e_1`` on long tridiagonals: they contribute below 1e-18 to the scaled
#: coefficients (entries at most 1), four orders under the stopping rule's rounding floor.
EXP_CUT = 41.5
#: Tridiagonals from this many steps on may take the subset path of :func:`_expm_tridiag`.
SUBSET_MIN_STEPS = 64


@dataclass
class _RitzHint:
    """What a check learnt about each column's tridiagonal, for the next (longer) one.

    ``theta_min`` is the smallest Ritz value (an upper bound on the next one's, by
    interlacing); ``count`` how many Ritz values lay within ``EXP_CUT / t`` of it.
    """

    theta_min: np.ndarray
    count: np.ndarray


def _expm_tridiag(alpha: torch.Tensor, beta: torch.Tensor, t: torch.Tensor,
                  hint: _RitzHint | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, _RitzHint]:
    """``exp(-t_c T_c) e_1`` for the batch of symmetric tridiagonals ``T_c``, scaled.

    Two paths. The whole eigendecomposition of every ``T_c`` (batched dense ``eigh``), and for
    long tridiagonals whose previous check found few Ritz values that matter (``hint``: at most
    ``m / 8`` within ``EXP_CUT / t`` of the smallest) only those, by LAPACK's MRRR on the
    tridiagonal itself (``stemr``, eigenvalues in ``(gershgorin, theta_min_prev + EXP_CUT / t]``,
    a superset since ``theta_min`` only falls as the tridiagonal grows). At long times only a
    few Ritz values matter: icosphere(5), m = 500, 16 columns, t = 30: 19 against 275 ms (3 of
    500 pairs per column), t = 3: 44 ms (11 pairs); with many pairs (short times) the dense
    path is faster, and Lanczos' ghost clusters slow MRRR down (all 500 pairs: 800 ms).

    Parameters
    ----------
    alpha : (m, C) real tensor
        Diagonals.
    beta : (m - 1, C) real tensor
        Off-diagonals.
    t : (C,) real tensor
    hint : _RitzHint, optional
        From the previous call on the same columns (shorter tridiagonals).

    Returns
    -------
    coef : (m, C) real tensor
        ``exp(-t_c (T_c - theta_min)) e_1``: never overflows, and never underflows as a whole
        (its largest entry is of order one).
    log_scale : (C,) real tensor
        ``-t_c theta_min``; the result is ``coef * exp(log_scale)``. Keeping the two apart
        matters: in early steps ``theta_min`` can be far above the smallest eigenvalue, and
        ``exp(-t theta_min)`` underflows to 0 although the final answer does not.
    hint : _RitzHint
        For the next call.
    """
    m, C = alpha.shape
    tn = t.detach().cpu().double().numpy()
    theta_min, count = np.zeros(C), np.full(C, m)
    coef = torch.empty_like(alpha)
    log_scale = torch.empty_like(t)
    sub = np.zeros(C, dtype=bool)
    if hint is not None and m >= SUBSET_MIN_STEPS:
        sub = (tn > 0) & (hint.count <= m // 8)
    if sub.any():
        a = alpha.detach().cpu().double().numpy()
        b = beta.detach().cpu().double().numpy()
        out = np.zeros((m, C))
        for c in np.flatnonzero(sub):
            d, e = a[:, c].copy(), np.append(b[:, c], 0.0)
            lo = float(np.min(d) - 2.0 * np.max(np.abs(e))) - 1.0   # below the spectrum
            hi = float(hint.theta_min[c]) + EXP_CUT / tn[c]
            k, w, Z, info = lapack.dstemr(d, e, 1, lo, hi, 1, 1, compute_v=1)
            if info != 0 or k == 0:   # pragma: no cover - MRRR failure: the dense path
                sub[c] = False
                continue
            w, Z = w[:k], Z[:, :k]
            out[:, c] = Z @ (np.exp(-tn[c] * (w - w[0])) * Z[0])
            theta_min[c], count[c] = w[0], k
        cols = torch.from_numpy(np.flatnonzero(sub)).to(alpha.device)
        coef[:, cols] = torch.from_numpy(out[:, sub]).to(coef)
        log_scale[cols] = torch.from_numpy(-tn[sub] * theta_min[sub]).to(log_scale)
    dense = np.flatnonzero(~sub)
    if dense.size:
        cols = torch.from_numpy(dense).to(alpha.device)
        T = torch.diag_embed(alpha[:, cols].T)  # (c, m, m)
        if m > 1:
            idx = torch.arange(m - 1, device=alpha.device)
            T[:, idx, idx + 1] = beta[:, cols].T
            T[:, idx + 1, idx] = beta[:, cols].T
        theta, U = torch.linalg.eigh(T)  # (c, m), (c, m, m)
        shift = theta[:, :1]
        tc = t[cols]
        w = torch.exp(-tc[:, None] * (theta - shift)) * U[:, 0, :]  # (c, m)
        coef[:, cols] = torch.einsum("cij,cj->ci", U, w).T
        log_scale[cols] = -tc * shift[:, 0]
        th = theta.detach().cpu().double().numpy()
        theta_min[dense] = th[:, 0]
        with np.errstate(divide="ignore"):
            cut = np.where(tn[dense] > 0, EXP_CUT / tn[dense], np.inf)
        count[dense] = np.sum(th <= th[:, :1] + cut[:, None], axis=1)
    return coef, log_scale, _RitzHint(theta_min, count)


#: Block size (bytes) above which CPU runs with ``writes_into`` recycle blocks (two passes)
#: instead of storing the basis: glibc serves larger allocations with fresh pages.
RECYCLE_ABOVE = 32 * 2**20


def _tail_estimate(changes: list[tuple[torch.Tensor, torch.Tensor]], log_scale: torch.Tensor,
                   real: torch.dtype) -> torch.Tensor:
    """Error still to come after the last check, from the changes between checks (per column).

    A least-squares line through ``log d_k`` over the last ``W = max(3, checks / 4)`` changes
    gives the ratio ``r`` per check and the trend ``d_fit`` of the last change; the estimate is
    ``2 max(d, d_fit) max(r / (1 - r), 1)`` (``inf`` for ``r >= 1``). The ratio of the last two
    changes alone is noisy where convergence is slow (ratios from 0.07 to 8.5 between checks
    while the error fell 1 % per step, t lambda_max = 4e6 on a disconnected mesh): a momentary
    small ratio stopped the iteration at 90 times the tolerance.
    """
    W = min(len(changes), max(3, len(changes) // 4))
    tiny = torch.finfo(real).tiny
    logs = torch.stack([torch.log(d.clamp_min(tiny)) + (lg - log_scale)
                        for d, lg in changes[-W:]])            # (W, C), in the current scale
    x = torch.arange(W, dtype=real, device=logs.device)
    xc = (x - x.mean())[:, None]
    slope = (xc * (logs - logs.mean(dim=0))).sum(dim=0) / (xc * xc).sum()
    fit_last = logs.mean(dim=0) + slope * xc[-1, 0]
    r = torch.exp(slope)
    tail = torch.where(r < 1, r / (1 - r).clamp_min(torch.finfo(real).eps),
                       torch.full_like(r, math.inf))
    last = torch.exp(torch.maximum(logs[-1], fit_last))
    # x2: the geometric model is a model; without the factor 1.3e-6 was reached where 1e-6
    # was asked (t lambda_max = 700 on a genus-1 mesh)
    return 2.0 * last * tail.clamp_min(1.0)


def _default_budget(device: torch.device) -> int:
    """A quarter of the free memory of ``device`` (bytes)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**30


class _Monitor:
    """The stopping rule of the Lanczos iteration (module docstring), per column.

    Shared by :func:`lanczos_expm` (torch) and :func:`lanczos_expm_fused` (fused CPU kernels):
    both hand it the tridiagonal coefficients of ``B`` after every step.

    Parameters
    ----------
    t : (C,) real tensor
        Times.
    norm0 : (C,) real tensor
        Norms of the starting columns (a zero column has nothing to approximate).
    tol, check_every
        As in :func:`lanczos_expm`.
    real : torch.dtype
        Working real precision (its rounding floor ends a ``tol`` below it).
    """

    def __init__(self, t: torch.Tensor, norm0: torch.Tensor, tol: float, check_every: int,
                 real: torch.dtype) -> None:
        self.t, self.norm0, self.tol, self.every, self.real = t, norm0, tol, check_every, real
        C = t.shape[0]
        self.next_check = check_every
        self.coef = torch.zeros(1, C, dtype=real, device=t.device)
        self.log_scale = torch.zeros(C, dtype=real, device=t.device)
        self.prev_coef: torch.Tensor | None = None
        self.prev_log = torch.zeros(C, dtype=real, device=t.device)
        self.changes: list[tuple[torch.Tensor, torch.Tensor]] = []  # (||y_m - y_p||, scale)
        self.err = math.inf
        self.hint: _RitzHint | None = None

    def check(self, alphas: list[torch.Tensor], betas: list[torch.Tensor], beta: torch.Tensor,
              steps: int, last: bool) -> bool:
        """Whether to stop after step ``steps``.

        ``alphas`` has ``steps`` entries, ``betas`` one less, ``beta`` is the norm of the new
        residual. The estimate is evaluated only when due, on a breakdown or on the ``last``
        step; it sets ``coef``, ``log_scale`` and ``err``.
        """
        alpha, real, C = alphas[-1], self.real, self.t.shape[0]
        breakdown = bool(torch.all(beta <= 1e-14 * torch.abs(alpha).clamp_min(1e-300)))
        if not (steps >= self.next_check or breakdown or last):
            return False
        self.next_check = steps + max(self.every, steps // 16)
        a = torch.stack(alphas)
        b = torch.stack(betas) if betas else a.new_zeros(0, C)
        coef, log_scale, self.hint = _expm_tridiag(a, b, self.t, self.hint)  # (m, C), (C,)
        ynorm = torch.linalg.vector_norm(coef, dim=0)
        # the basis is orthonormal, so ||y_m - y_p|| is the norm of the coefficient
        # difference. The change d_k since the last check estimates the error of y_m
        # once convergence is fast; when it is slow (errors shrinking by r > 1/2 per
        # check, long times), the error still to come is r / (1 - r) d_k > d_k, and the
        # change alone was optimistic (1.5e-6 reached where 1e-6 was asked at
        # t lambda_max = 700); r comes from a trend over several checks (_tail_estimate).
        # Saad's beta_m |e_m^T exp(-tT) e_1| is used only until two changes exist: at
        # long times it underestimates (it is the residual, and the error of the slowest
        # mode grows like t times it: 2e-5 reached where 1e-6 was asked at
        # t lambda_max = 700 while it took the minimum). Everything is compared in the
        # current scale.
        est = beta * torch.abs(coef[-1])
        stalled = torch.zeros(C, dtype=torch.bool, device=beta.device)
        if self.prev_coef is not None:
            diff = coef.clone()
            factor = torch.exp(self.prev_log - log_scale)
            diff[: self.prev_coef.shape[0]] -= self.prev_coef * factor[None, :]
            change = torch.linalg.vector_norm(diff, dim=0)
            self.changes.append((change, log_scale))
            if len(self.changes) >= 2:
                # changes at the rounding floor: converged to working precision (a flat
                # floor would read as r = 1 and never stop). The floor is absolute in the
                # scaled coefficients (entries of U exp(..) U[0], all at most 1), not
                # relative to ||y||, which is small when z barely touches the slowest mode
                floor = 100 * torch.finfo(real).eps * ynorm.clamp_min(1.0)
                stalled = change <= floor
                est = torch.where(stalled, change,
                                  _tail_estimate(self.changes, log_scale, real))
        self.prev_coef, self.prev_log = coef, log_scale
        self.coef, self.log_scale = coef, log_scale
        rel = est / ynorm.clamp_min(torch.finfo(real).tiny)
        rel = torch.where(self.norm0 > 0, rel, torch.zeros_like(rel))
        self.err = float(rel.max())
        # a column at the rounding floor cannot get better: a tol below working precision
        # ends there (logged) instead of running to max_steps
        floor_only = bool(torch.all((rel <= self.tol) | stalled)) and self.err > self.tol
        if floor_only:
            log.info("lanczos: tol %.1e is below the rounding floor of %s; stopped at "
                     "an estimated %.1e after %d steps", self.tol, real, self.err, steps)
        return self.err <= self.tol or breakdown or floor_only


def _warn_indefinite(log_scale: torch.Tensor, t: torch.Tensor, alphas: list[torch.Tensor]
                     ) -> None:
    """Warn when a negative Ritz value makes the flow grow (``log_scale = -t theta_min``)."""
    moving = t > 0
    if bool(moving.any()):
        theta_min = float((-log_scale / torch.where(moving, t, torch.ones_like(t)))[moving].min())
        size = float(torch.stack(alphas).abs().max())
        # a zero eigenvalue's Ritz value is only zero to rounding (float32, icosphere(3):
        # -1.8e-5 with alpha up to 1.8e3); the threshold follows the precision
        if theta_min < -max(1e-8, 1e3 * float(torch.finfo(log_scale.dtype).eps)) * size:
            log.warning("the operator is indefinite (Ritz value %.3e < 0): the flow grows like "
                        "exp(%.3e t) instead of decaying; negative cotan weights of a "
                        "non-Delaunay mesh?", theta_min, -theta_min)


def lanczos_expm(apply_B: Callable[..., torch.Tensor], z: torch.Tensor,
                 t: torch.Tensor, *, tol: float = 1e-10, max_steps: int = 1000,
                 check_every: int = 2, max_basis_bytes: int | None = None,
                 writes_into: bool = False) -> tuple[torch.Tensor, KrylovInfo]:
    """Approximate ``exp(-t_c B) z_c`` for every column ``c`` by the Lanczos method.

    Parameters
    ----------
    apply_B : callable
        ``X -> B X`` for ``X : (V, C)``; ``B`` Hermitian positive semidefinite (a shifted
        spectrum is fine, negative eigenvalues are handled exactly but make the problem
        harder). It must return a new tensor: the iteration updates it in place.
    z : (V, C) tensor
        Real or complex starting block.
    t : (C,) real tensor
        One non-negative time per column.
    tol : float
        Relative tolerance of the stopping rule (module docstring).
    max_steps : int
        Upper bound on Lanczos steps; :class:`KrylovNotConverged` is raised beyond it.
    check_every : int
        Least number of steps between evaluations of the error estimate (the spacing grows
        like ``steps / 16``).
    max_basis_bytes : int, optional
        Largest basis kept in memory before switching to the two-pass scheme. Default: a
        quarter of the free memory of the device (physical memory on CPU); but zero (two
        passes from the start, recycling three blocks) on CPU with ``writes_into`` when one
        block exceeds ``RECYCLE_ABOVE`` bytes, where every stored block would be fresh pages
        (100k x 64 complex: 116 ms per product into fresh pages, 29 ms into a recycled block,
        so two passes cost less than one).
    writes_into : bool
        ``apply_B`` accepts ``out=`` (a ``(V, C)`` block it may overwrite, returned): blocks
        the iteration no longer needs are then recycled instead of allocating a fresh block
        per product (on CPU the page faults of a fresh 100 MB block cost three times the
        sparse product itself).

    Returns
    -------
    y : (V, C) tensor
        Same dtype and device as ``z``.
    info : KrylovInfo
    """
    C = z.shape[1]
    if max_basis_bytes is None:
        big = z.numel() * z.element_size() > RECYCLE_ABOVE
        max_basis_bytes = 0 if (writes_into and big and z.device.type == "cpu") else \
            _default_budget(z.device)
    real = torch.float32 if z.dtype in (torch.float32, torch.complex64) else torch.float64
    t = t.to(device=z.device, dtype=real).reshape(C)
    # column reductions: torch.linalg.vecdot / vector_norm along dim 0 allocate a (V, C)
    # temporary per call, and at 100k x 64 complex the page faults of those 100 MB cost four
    # times the arithmetic (90 ms against 18 ms measured); on CPU column_real_dot goes through
    # a cache-sized buffer, on CUDA through this reused workspace
    work = None if z.device.type == "cpu" else torch.empty(
        z.shape[0], z.shape[1] * (2 if z.is_complex() else 1), dtype=real, device=z.device)
    norm0 = column_real_dot(z, z, workspace=work).sqrt_()  # (C,)
    safe = torch.where(norm0 > 0, norm0, torch.ones_like(norm0))
    q = z / safe.to(z.dtype)
    q_prev = torch.zeros_like(z)
    beta_prev = torch.zeros(C, dtype=real, device=z.device)
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    basis: list[torch.Tensor] | None = [q]
    bytes_per = q.numel() * q.element_size()
    steps = 0
    converged = False
    spare: torch.Tensor | None = None   # a block no longer referenced, for writes_into

    def product(x: torch.Tensor) -> torch.Tensor:
        nonlocal spare
        if writes_into and spare is not None:
            out, spare = spare, None
            return apply_B(x, out=out)
        return apply_B(x)

    monitor = _Monitor(t, norm0, tol, check_every, real)
    while steps < max_steps:
        w = product(q)
        # in-place updates: fresh (V, C) temporaries cost page faults that dominate on CPU
        alpha = column_real_dot(q, w, workspace=work)   # Re(q^H w) (real: B is Hermitian)
        w.addcmul_(q, alpha.to(z.dtype)[None, :], value=-1)
        if steps:
            w.addcmul_(q_prev, beta_prev.to(z.dtype)[None, :], value=-1)
        beta = column_real_dot(w, w, workspace=work).sqrt_()
        alphas.append(alpha)
        steps += 1
        if monitor.check(alphas, betas, beta, steps, steps == max_steps):
            converged = True
            break
        betas.append(beta)
        beta_safe = torch.where(beta > 0, beta, torch.ones_like(beta))
        w.mul_(beta_safe.reciprocal().to(z.dtype)[None, :])
        if basis is not None and (len(basis) + 1) * bytes_per > max_basis_bytes:
            basis = None
        if basis is None and steps > 1:
            spare = q_prev          # not in a stored basis: reuse it for the next product
        q_prev, q = q, w
        beta_prev = beta
        if basis is not None:
            basis.append(q)
    if not converged:
        raise KrylovNotConverged(
            f"Lanczos did not reach tol={tol:.1e} in {max_steps} steps (estimate "
            f"{monitor.err:.1e}); raise max_steps, loosen tol, or use the spectral/implicit "
            "method for large t")
    coef, log_scale, err = monitor.coef, monitor.log_scale, monitor.err
    _warn_indefinite(log_scale, t, alphas)
    m = coef.shape[0]
    scale = (coef * (torch.exp(log_scale) * norm0)[None, :]).to(z.dtype)  # (m, C)
    products = steps
    y = torch.zeros_like(z)
    if basis is not None:
        for j in range(m):
            y.addcmul_(basis[j], scale[j][None, :])
    else:  # second pass: regenerate q_j with the stored coefficients
        q = z / safe.to(z.dtype)
        q_prev = torch.zeros_like(z)
        spare = None
        for j in range(m):
            y.addcmul_(q, scale[j][None, :])
            if j == m - 1:
                break
            w = product(q)
            products += 1
            w.addcmul_(q, alphas[j].to(z.dtype)[None, :], value=-1)
            if j > 0:
                w.addcmul_(q_prev, betas[j - 1].to(z.dtype)[None, :], value=-1)
            bj = torch.where(betas[j] > 0, betas[j], torch.ones_like(betas[j]))
            w.mul_(bj.reciprocal().to(z.dtype)[None, :])
            spare = q_prev if j > 0 else None
            q_prev, q = q, w
    log.debug("lanczos: %d steps, %d products, estimate %.1e, stored basis %s",
              steps, products, err, basis is not None)
    return y, KrylovInfo(steps, products, err, basis is not None)


def lanczos_expm_fused(op: FusedOperator, bound: float, x: np.ndarray, scale: np.ndarray,
                       t: np.ndarray, *, tol: float = 1e-10, max_steps: int = 1000,
                       check_every: int = 2, threads: int | None = None
                       ) -> tuple[np.ndarray, KrylovInfo]:
    """``M^-1/2 exp(-t_c B) M^1/2 x_c`` by the Lanczos method on the fused CPU kernels.

    The same iteration and stopping rule as :func:`lanczos_expm`, run on the shifted operator
    ``S = (4 / b) B - 2 I`` of the Chebyshev kernels (:class:`~.fused.FusedLanczos`): the
    Krylov spaces of ``S`` and ``B`` are the same, and the tridiagonals map as
    ``T_B = (b / 4) (T_S + 2 I)``. Always two passes (the basis is regenerated): a step of the
    first makes two passes over memory where torch's makes about fourteen (product,
    reductions, updates), and the second pass makes one per two steps.

    Parameters
    ----------
    op : FusedOperator
        ``S = (4 / bound) B - 2 I``, reordered.
    bound : float
        The ``b`` of ``op``.
    x : (V, C) ndarray
        Real or complex (complex for a complex ``op``), of ``op``'s precision.
    scale : (V,) ndarray
        ``sqrt(m_i)``.
    t : (C,) ndarray
        Non-negative times.
    tol, max_steps, check_every
        As in :func:`lanczos_expm`.
    threads : int, optional
        Row ranges run in parallel (default: torch's thread count).

    Returns
    -------
    y : (V, C) ndarray
        Same dtype as ``x``.
    info : KrylovInfo
    """
    bound = validate_positive(bound, "bound")
    tol = validate_positive(tol, "tol")
    max_steps = validate_int(max_steps, "max_steps", minimum=1)
    check_every = validate_int(check_every, "check_every", minimum=1)
    x = check_block(x)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.size != x.shape[1] or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ParameterError(f"t must hold {x.shape[1]} finite non-negative times, got {t}")
    engine = FusedLanczos(op, np.ascontiguousarray(x), scale, threads)
    real = torch.float32 if op.dtype == np.float32 else torch.float64
    quarter = 0.25 * bound
    monitor = _Monitor(torch.from_numpy(t).to(real), torch.from_numpy(engine.norm0).to(real),
                       tol, check_every, real)
    alphas_s: list[np.ndarray] = []
    betas_s: list[np.ndarray] = []
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    steps, converged = 0, False
    while steps < max_steps:
        a, b = engine.step()
        steps += 1
        alphas_s.append(a)
        alphas.append(torch.from_numpy(quarter * (a + 2.0)).to(real))
        beta = torch.from_numpy(quarter * b).to(real)
        if monitor.check(alphas, betas, beta, steps, steps == max_steps):
            converged = True
            break
        betas_s.append(b)
        betas.append(beta)
    if not converged:
        raise KrylovNotConverged(
            f"Lanczos did not reach tol={tol:.1e} in {max_steps} steps (estimate "
            f"{monitor.err:.1e}); raise max_steps, loosen tol, or use the spectral/implicit "
            "method for large t")
    _warn_indefinite(monitor.log_scale, monitor.t, alphas)
    coef = (monitor.coef * torch.exp(monitor.log_scale)[None, :]).double().numpy()
    m = coef.shape[0]
    C = x.shape[1]
    y = engine.combine(np.array(alphas_s[:m]).reshape(m, C),
                       np.array(betas_s[: m - 1]).reshape(m - 1, C), coef)
    log.debug("lanczos (fused): %d steps, %d products, estimate %.1e", steps, steps + m - 1,
              monitor.err)
    return y, KrylovInfo(steps, steps + m - 1, monitor.err, False)


def csr_product(B: torch.Tensor, X: torch.Tensor, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``B @ X`` for a sparse CSR ``B`` of ``X``'s dtype, written into ``out`` on CPU.

    On CPU this is MKL's threaded kernel through ``addmm`` with ``beta = 0`` (29 ms for a
    100k x 64 complex block into a recycled block, 116 ms into fresh pages); on CUDA the plain
    product (the caching allocator has no fresh pages to avoid) and ``out`` is ignored.

    Parameters
    ----------
    B : (V, V) sparse CSR Tensor
    X : (V, C) Tensor
    out : (V, C) Tensor, optional
        A block that may be overwritten (``lanczos_expm(..., writes_into=True)``).

    Returns
    -------
    (V, C) Tensor
    """
    X = X.detach()
    if X.device.type != "cpu":
        return B @ X
    if out is None:
        out = torch.empty_like(X)
    return torch.addmm(out, B, X, beta=0, out=out)


def heat_lanczos(B: torch.Tensor | None, sqrt_mass: torch.Tensor, x: torch.Tensor,
                 t: torch.Tensor, *, tol: float,
                 wide: Callable[[torch.Tensor], tuple[Any, ...]] | None = None,
                 fused: FusedOperator | None = None, bound: float | None = None
                 ) -> tuple[torch.Tensor, KrylovInfo]:
    """``exp(-t M^-1 L) x = M^-1/2 exp(-t B) M^1/2 x`` by the Lanczos method, no autograd.

    The one Krylov heat flow of the library: ``HeatKernel`` and the layers'
    ``heat_flow(method="krylov")`` both call it (they differ only in where ``B`` is cached).
    It runs :func:`lanczos_expm_fused` where ``fused`` takes ``x`` (CPU, its precision, wide
    enough: :data:`~manifoldmp.spectral.fused.MIN_INPUT_ROW_BYTES`, complex operators
    :data:`~manifoldmp.spectral.fused.MIN_COMPLEX_INPUT_ROW_BYTES`), else
    :func:`lanczos_expm` with torch's products.

    In float32 the rounding is relative to the input, so where the output is much smaller
    (long times) it loses digits: about ``eps * steps * ||z|| / ||y||`` per column
    (icosphere(3), t = 1, output 1-5 % of the input: 4e-5 to 8e-5 measured against estimates of
    4e-5 to 1.5e-4). When that estimate exceeds ``max(tol, FLOAT32_ACCURACY)`` and ``wide`` is
    given, the flow is redone in float64 and returned in ``x``'s dtype, as Chebyshev does.

    Parameters
    ----------
    B : (V, V) sparse CSR Tensor or None
        ``M^-1/2 L M^-1/2`` in ``x``'s dtype and on its device (None only with a ``fused``
        operator that takes ``x``).
    sqrt_mass : (V,) real Tensor
        ``sqrt(m_i)``.
    x : (V, C) Tensor
    t : (C,) real Tensor
        Non-negative times, one per column.
    tol : float
        Relative tolerance of the stopping rule.
    wide : callable, optional
        ``x64 -> (B, sqrt_mass)`` or ``(B, sqrt_mass, fused)`` in float64, given ``x`` in
        float64, for the float64 rerun described above (``B`` None only with a ``fused`` that
        takes ``x64``).
    fused : FusedOperator, optional
        ``S = (4 / bound) B - 2 I`` for the fused CPU kernels (the Chebyshev method's).
    bound : float, optional
        The ``b`` of ``fused`` (required with it).

    Returns
    -------
    y : (V, C) Tensor
    info : KrylovInfo
        Of the float64 run where there was one.
    """
    use_fused = fused is not None and bound is not None and _fused_fits(fused, x)
    if B is None and not use_fused:
        raise ParameterError("B may be None only with a fused operator (and its bound) that "
                             f"takes x; x is {tuple(x.shape)} {x.dtype} on {x.device}")
    s = sqrt_mass[:, None].to(x.dtype)
    # the float32 rounding check needs ||M^1/2 x|| and ||M^1/2 y|| per column (only then)
    check = wide is not None and x.dtype in (torch.float32, torch.complex64)
    if use_fused:
        y_np, info = lanczos_expm_fused(
            fused, float(bound), x.detach().resolve_conj().numpy(),
            sqrt_mass.detach().cpu().numpy(), t.detach().cpu().numpy(), tol=tol)
        y = torch.from_numpy(y_np)
        if check:
            z, sy = s * x.detach(), s * y
            zn, yn = column_real_dot(z, z).sqrt_(), column_real_dot(sy, sy).sqrt_()
    else:
        z = s * x.detach()
        y, info = lanczos_expm(lambda X, out=None: csr_product(B, X, out), z, t,
                               tol=tol, writes_into=True)
        if check:
            zn, yn = column_real_dot(z, z).sqrt_(), column_real_dot(y, y).sqrt_()
        y = y.div_(s)
    if check:
        target = max(tol, FLOAT32_ACCURACY)
        zn, yn = zn.double(), yn.double()
        ratio = float(torch.max(torch.where(yn > 0, zn / yn.clamp_min(1e-300),
                                            torch.zeros_like(zn))))
        rounding = torch.finfo(torch.float32).eps * max(info.steps, 1) * ratio
        if rounding > target:
            x64 = x.detach().to(torch.complex128 if x.is_complex() else torch.float64)
            got = wide(x64)
            y64, info = heat_lanczos(got[0], got[1], x64, t.double(), tol=tol,
                                     fused=got[2] if len(got) > 2 else None, bound=bound)
            log.debug("lanczos: float32 rounding estimate %.1e above %.1e; recomputed in "
                      "float64", rounding, target)
            return y64.to(x.dtype), info
    return y, info
