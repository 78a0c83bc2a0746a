"""Chebyshev expansion of ``exp(-t B) z`` for a Hermitian ``B`` with spectrum in ``[0, b]``.

With ``s = 2 lambda / b - 1`` mapping ``[0, b]`` onto ``[-1, 1]`` and ``w = t b / 2``,

``exp(-t lambda) = e^{-w} e^{-w s} = sum_k c_k T_k(s)``,
``c_k = (2 - delta_k0) (-1)^k I_k(w) e^{-w}``

(the generating function of the modified Bessel functions ``I_k``; ``I_k(w) e^{-w}`` is
``scipy.special.ive``). The partial sum of degree ``m`` is applied by the three-term recurrence
``y_{k+1} = S y_k - y_{k-1}`` with the shifted operator ``S = (4 / b) B - 2 I``: one sparse
block product per degree, written in place into the block it replaces, and one accumulation.
No inner products, no basis, no dense ``m x m`` problem; on a GPU nothing leaves the device.
Complex features of a complex operator run on its stacked real form (:func:`stacked_real`):
MKL's real product is faster than its complex one on the same data.
On the CPU, :class:`~manifoldmp.HeatKernel` and the layers run the same recurrence through
the fused kernels of :mod:`~manifoldmp.spectral.fused` (:func:`chebyshev_expm_fused`) for
inputs of at least 128 bytes per row (32 for complex operators): two degrees and their
accumulation per pass over memory, 1.7x faster on a 100k-vertex mesh; the degree rule and
bound below are shared (``_expand``).

Error: ``|T_k| <= 1`` on ``[-1, 1]``, so for every ``z``
``||p_m(B) z - exp(-t B) z|| <= tail_m ||z||`` with ``tail_m = sum_{k > m} |c_k|``, computed
to full precision from the Bessel values. The constant term gets ``tail_m`` added, which makes
``p_m(0) = 1`` exactly (``sum_k (-1)^k c_k = 1``): the constants of a scalar flow stay
stationary and its mass is conserved to rounding; the bound becomes ``2 tail_m ||z||``. This is
an a-priori bound, valid whenever ``b`` bounds the spectrum, which :func:`spectrum_bound`
does rigorously (unlike the a-posteriori estimates of the Lanczos method): Collatz-Wielandt
bounds of ``|B|`` by power iteration, within 0.02-1.7 % of ``lambda_max`` on the shared
meshes where the Gershgorin bounds are 18-37 % above it.

Degree: the smallest ``m`` whose bound meets ``tol`` relative to the input, then, once the
output norm is known, relative to the output (``tol ||y_c||`` in the ``M``-norm of the heat
problem, as for Lanczos): the recurrence simply continues. For ``w >> 1`` the degree is about
``sqrt(2 w ln(1 / tol))``, the same square-root law as Lanczos, which, per degree, costs two
sparse products (its basis is regenerated in a second pass on large blocks) and three column
reductions. Lanczos adapts to a discrete low end of the spectrum at long times, where the
Chebyshev degree keeps growing like ``sqrt(t b)``; :class:`~manifoldmp.HeatKernel` chooses
between them (``method="auto"``).

Rounding: the recurrence is stable (errors grow at most like ``m^2 eps`` in ``T_k``); a
``tol`` below ``ROUNDING * m * eps`` relative to the input is not attempted, and the stated
bound then includes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.special as special
import torch

from manifoldmp.errors import ManifoldmpError, ParameterError
from manifoldmp.mesh.validate import validate_int, validate_positive
from manifoldmp.operators.sparse import column_real_dot
from manifoldmp.spectral import fused as _fused_mod
from manifoldmp.spectral.fused import FusedOperator, FusedRecurrence, check_block

__all__ = ["FLOAT32_ACCURACY", "ChebyshevInfo", "ChebyshevNotConverged", "chebyshev_coefficients",
           "chebyshev_degree", "chebyshev_expm", "chebyshev_expm_fused", "gershgorin_bound",
           "spectrum_bound", "stacked_real"]

log = logging.getLogger(__name__)

#: Rounding level of the recurrence, in units of ``degree * eps`` relative to the input.
ROUNDING = 4.0

#: A float32 flow whose stated bound exceeds ``max(tol, FLOAT32_ACCURACY)`` is recomputed with
#: a float64 recurrence (:func:`heat_chebyshev`'s ``wide``, used by
#: :class:`~manifoldmp.HeatKernel` and the layers; returned in float32). The rounding is
#: relative to the input and grows with the degree, so where the output is much smaller than
#: the input (long times) float32 alone loses digits: icosphere(3), t = 1, output 1-5 % of
#: the input: 3e-4 to 1.5e-3 relative error in float32, 7e-7 to 4e-6 with the float64
#: recurrence.
FLOAT32_ACCURACY = 1e-5


class ChebyshevNotConverged(ManifoldmpError):
    """The degree needed for the tolerance exceeds ``max_degree``."""


@dataclass(frozen=True)
class ChebyshevInfo:
    """What one call of :func:`chebyshev_expm` did.

    Attributes
    ----------
    degree : int
        Polynomial degree (number of sparse block products).
    error_bound : float
        Largest relative error bound over the columns, relative to the output, in the norm
        of the symmetric problem (the ``M``-norm of the heat problem).
    spectrum_bound : float
        ``b``: the expansion is valid for spectra in ``[0, b]``.
    """

    degree: int
    error_bound: float
    spectrum_bound: float


def _check_w(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ParameterError(f"w = t b / 2 must be finite and >= 0 per column, got {w}")
    return w


def _n_terms(w: float) -> int:
    """Number of terms beyond which ``I_k(w) e^{-w}`` is below ``1e-30`` (tested to ``1e8``).

    About ``exp(-k^2 / (2 w))`` while ``k << w``, faster beyond.
    """
    return math.ceil(math.sqrt(140.0 * w) + 70.0)


def _check_pencil(L: Any, mass: Any) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(|L|, mass)`` checked: square sparse ``L``, ``(V,)`` finite positive masses."""
    if not sp.issparse(L) or L.shape[0] != L.shape[1]:
        raise ParameterError(f"L must be a square scipy.sparse matrix, got {type(L).__name__} "
                             f"of shape {getattr(L, 'shape', None)}")
    A = abs(sp.csr_matrix(L))
    mass = np.asarray(mass, dtype=np.float64)
    if mass.shape != (L.shape[0],) or not np.all(np.isfinite(mass)) or np.any(mass <= 0):
        raise ParameterError(f"mass must be ({L.shape[0]},) finite and > 0, got shape "
                             f"{mass.shape}, min {mass.min() if mass.size else None}")
    if not np.all(np.isfinite(A.data)):
        raise ParameterError(f"L has {int(np.count_nonzero(~np.isfinite(A.data)))} non-finite "
                             "entries; expected a finite matrix")
    return A, mass


def gershgorin_bound(L: sp.spmatrix, mass: np.ndarray) -> float:
    """Rigorous upper bound on the spectrum of ``M^-1 L`` for Hermitian ``L``, diagonal ``M``.

    The smaller of the Gershgorin bounds of ``M^-1 L`` (``max_i sum_j |L_ij| / m_i``) and of
    the similar Hermitian ``M^-1/2 L M^-1/2`` (``max_i sum_j |L_ij| / sqrt(m_i m_j)``).
    :func:`spectrum_bound` starts from it and is tighter.

    Parameters
    ----------
    L : (V, V) sparse matrix
    mass : (V,) ndarray
        Positive lumped masses.
    """
    return _gershgorin(*_check_pencil(L, mass))


def _gershgorin(A: sp.csr_matrix, mass: np.ndarray) -> float:
    """:func:`gershgorin_bound` of checked ``|L|`` and masses."""
    rows = np.asarray(A.sum(axis=1)).ravel() / mass
    s = 1.0 / np.sqrt(mass)
    sym = np.asarray(A @ s).ravel() * s
    return float(min(np.max(rows), np.max(sym))) if mass.size else 0.0


#: Power iterations of :func:`spectrum_bound` (each one sparse product with one vector).
BOUND_ITERATIONS = 30

#: Relative margin added to :func:`spectrum_bound` for the rounding of its row sums (each
#: ``(|B| d)_i / d_i`` is computed to a few ``eps`` per nonzero of the row).
BOUND_MARGIN = 1e-12


def spectrum_bound(L: sp.spmatrix, mass: np.ndarray, *,
                   iterations: int = BOUND_ITERATIONS) -> float:
    """Rigorous upper bound on the spectrum of ``M^-1 L``, close to ``lambda_max``.

    For the Hermitian ``B = M^-1/2 L M^-1/2`` (similar to ``M^-1 L``) and the entrywise
    absolute value ``|B|``, ``x^H B x <= |x|^T |B| |x|`` gives ``lambda_max(B) <= rho(|B|)``,
    and for every positive vector ``d`` (Collatz-Wielandt)
    ``rho(|B|) <= max_i (|B| d)_i / d_i``.
    ``d = 1`` and ``d = M^1/2`` are the two Gershgorin bounds (:func:`gershgorin_bound`);
    power iterations ``d <- |B| d`` move ``d`` towards the Perron vector of ``|B|``, where the
    bound reaches ``rho(|B|)``. Every iterate's bound is rigorous; the smallest is returned,
    with a relative margin of :data:`BOUND_MARGIN` for rounding. ``|B|`` does not depend on the
    transports, so the bound is the same for every type ``n``.

    On the shared meshes (armadillo, boot, spot, nefertiti) the Gershgorin bound is
    1.18-1.37 ``lambda_max`` and this one 1.0002-1.017; the Chebyshev degree, which grows like
    ``sqrt(t b)``, falls by up to 15 %. Where ``rho(|B|)`` itself exceeds ``lambda_max`` the
    bound cannot go below it: on the very regular icospheres ``rho(|B|)`` is 1.16-1.29
    ``lambda_max`` (Gershgorin 1.41-1.46). The cost is ``iterations`` products of ``|B|`` with
    one vector (6-33 ms on 15k-100k vertices).

    Parameters
    ----------
    L : (V, V) sparse matrix
        Hermitian (real or complex).
    mass : (V,) ndarray
        Positive lumped masses.
    iterations : int
        Power iterations (0: the Gershgorin bound alone).

    Returns
    -------
    float
    """
    A, mass = _check_pencil(L, mass)
    iterations = validate_int(iterations, "iterations", minimum=0)
    if not mass.size:
        return 0.0
    s = 1.0 / np.sqrt(mass)
    Ab = sp.csr_matrix(sp.diags(s) @ A @ sp.diags(s))   # |B| = M^-1/2 |L| M^-1/2
    best = _gershgorin(A, mass)
    y = Ab @ np.ones(len(mass))
    for _ in range(iterations):
        top = float(np.max(y))
        if not top > 0:
            return 0.0   # |B| = 0: L is zero
        # any positive d gives a bound; the floor keeps d positive where |B| d vanishes
        # (isolated vertices) or decays (components other than the dominant one)
        d = np.maximum(y / top, 1e-8)
        y = Ab @ d
        best = min(best, float(np.max(y / d)))
    return best * (1.0 + BOUND_MARGIN)


def chebyshev_coefficients(w: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``c_k(w)`` and tails ``sum_{j > k} |c_j(w)|`` for ``k = 0..degree``.

    Parameters
    ----------
    w : (C,) ndarray
        ``t b / 2 >= 0`` per column.
    degree : int

    Returns
    -------
    coef : (degree + 1, C) ndarray
        ``(2 - delta_k0) (-1)^k ive(k, w)``.
    tail : (degree + 1, C) ndarray
        ``tail[k] = sum_{j > k} |c_j|``, summed from the far end (no cancellation).
    """
    w = _check_w(w)
    degree = validate_int(degree, "degree", minimum=0)
    uniq, inv = np.unique(w, return_inverse=True)
    n = max(degree + 1, max((_n_terms(float(v)) for v in uniq), default=1))
    k = np.arange(n, dtype=np.float64)[:, None]
    mag = special.ive(k, uniq[None, :]) * np.where(k == 0, 1.0, 2.0)   # |c_k| >= 0
    tail = np.zeros_like(mag)
    tail[:-1] = np.cumsum(mag[::-1], axis=0)[::-1][1:]
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    return (sign * mag)[: degree + 1, inv], tail[: degree + 1, inv]


def _first_degree(tail: np.ndarray, rel: np.ndarray | float, eps: float) -> int | None:
    """Smallest ``m`` with ``2 tail[m] <= max(rel, ROUNDING m eps)`` in every column, or None."""
    rel = np.broadcast_to(np.asarray(rel, dtype=np.float64), tail.shape[1:])
    m = np.arange(tail.shape[0], dtype=np.float64)[:, None]
    good = (2.0 * tail <= np.maximum(rel[None, :], ROUNDING * np.maximum(m, 1.0) * eps)).all(1)
    return int(np.argmax(good)) if good.any() else None


#: Recent results of :func:`_all_coefficients` (key: the times' bytes and ``max_degree``).
#: The Bessel evaluations cost 0.3 ms (64 columns, ``t b`` up to 1e3), 32 ms (up to 5e4) and
#: 300 ms (up to 2e6), and the same times come back: a layer's backward pass after its
#: forward, a float32 flow's float64 redo after the check of :func:`_float32_cannot_reach`
#: (armadillo, float32, 64 channels, forward + backward: 527 against 591 ms for type 0, 1205
#: against 1271 ms for type 1). Entries above ``_COEF_CACHE_BYTES`` are not kept.
_COEF_CACHE: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}
_COEF_CACHE_SIZE = 8
_COEF_CACHE_BYTES = 8 * 2**20


def _all_coefficients(w: np.ndarray, max_degree: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`chebyshev_coefficients` up to where they vanish (at most ``max_degree``).

    Read-only arrays, shared between calls with the same ``w`` (``_COEF_CACHE``).
    """
    w = np.ascontiguousarray(w, dtype=np.float64)
    key = (w.tobytes(), int(max_degree))
    hit = _COEF_CACHE.get(key)
    if hit is not None:
        return hit
    n = min(max_degree, max((_n_terms(float(v)) for v in np.unique(w)), default=1))
    coef, tail = chebyshev_coefficients(w, n)
    coef.flags.writeable = False
    tail.flags.writeable = False
    if _COEF_CACHE_SIZE > 0 and coef.nbytes + tail.nbytes <= _COEF_CACHE_BYTES:
        if len(_COEF_CACHE) >= _COEF_CACHE_SIZE:
            _COEF_CACHE.pop(next(iter(_COEF_CACHE)))   # the oldest
        _COEF_CACHE[key] = (coef, tail)
    return coef, tail


def chebyshev_degree(w: np.ndarray, rel: np.ndarray | float, *, max_degree: int,
                     eps: float = 2.0**-52) -> int:
    """Smallest ``m`` with ``2 tail_m(w_c) <= max(rel_c, rounding)`` for every column.

    Parameters
    ----------
    w : (C,) ndarray
        ``t b / 2`` per column.
    rel : float or (C,) ndarray
        Bound wanted, relative to the input norm.
    max_degree : int
        Largest degree considered; ``max_degree + 1`` is returned when it does not suffice.
    eps : float
        Unit roundoff of the working precision (the floor ``ROUNDING m eps``).
    """
    w = _check_w(w)
    max_degree = validate_int(max_degree, "max_degree", minimum=0)
    m = _first_degree(_all_coefficients(w, max_degree)[1], rel, eps)
    return max_degree + 1 if m is None else m


def chebyshev_expm(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
                   t: torch.Tensor, bound: float, *, tol: float = 1e-10,
                   max_degree: int = 20000, first: Callable[[torch.Tensor], torch.Tensor]
                   | None = None) -> tuple[torch.Tensor, ChebyshevInfo]:
    """Approximate ``exp(-t_c B) z_c`` for every column by a Chebyshev expansion.

    Parameters
    ----------
    step : callable
        ``(X, Y) -> S X - Y`` with ``S = (4 / b) B - 2 I``; it may (and on CPU should) write
        the result into ``Y`` and return it.
    z : (V, C) tensor
        Real or complex starting block (left unchanged).
    t : (C,) real tensor
        One non-negative time per column.
    bound : float
        ``b >= lambda_max(B)``, with ``B`` positive semidefinite.
    tol : float
        Relative tolerance on the output (module docstring).
    max_degree : int
        :class:`ChebyshevNotConverged` is raised when the tolerance needs a higher degree.
    first : callable, optional
        ``X -> (S / 2) X`` for the first term; default ``0.5 * step(X, 0)``.

    Returns
    -------
    y : (V, C) tensor
    info : ChebyshevInfo
    """
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or not (z.is_floating_point()
                                                              or z.is_complex()):
        raise ParameterError(f"z must be a (V, C) floating or complex tensor, got "
                             f"{getattr(z, 'shape', type(z).__name__)}")
    C = z.shape[1]
    if not isinstance(t, torch.Tensor) or t.numel() != C:
        raise ParameterError(f"t must be a tensor with one time per column ({C}), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    real = torch.float32 if z.dtype in (torch.float32, torch.complex64) else torch.float64
    engine = _TorchRecurrence(step, first, z, real)
    tail, info = _expand(engine, t.detach().cpu().numpy(), bound, tol, max_degree,
                         float(torch.finfo(real).eps))
    return engine.result(tail), info


def chebyshev_expm_fused(op: FusedOperator, x: np.ndarray, scale: np.ndarray, t: np.ndarray,
                         bound: float, *, tol: float = 1e-10, max_degree: int = 20000,
                         threads: int | None = None) -> tuple[np.ndarray, ChebyshevInfo]:
    """``M^-1/2 exp(-t_c B) M^1/2 x_c`` by the fused CPU kernels (:mod:`~.fused`).

    The same expansion, degree rule and bound as :func:`chebyshev_expm`, two degrees per pass
    over memory.

    Parameters
    ----------
    op : FusedOperator
        ``S = (4 / b) B - 2 I``, reordered.
    x : (V, C) ndarray
        Real or complex (complex for a complex ``op``), of ``op``'s precision.
    scale : (V,) ndarray
        ``sqrt(m_i)``.
    t : (C,) ndarray
        Non-negative times.
    bound, tol, max_degree
        As in :func:`chebyshev_expm`.
    threads : int, optional
        Row ranges run in parallel (default: torch's thread count).

    Returns
    -------
    y : (V, C) ndarray
        Same dtype as ``x``.
    info : ChebyshevInfo
    """
    x = check_block(x)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.size != x.shape[1]:
        raise ParameterError(f"t must have one time per column ({x.shape[1]}), got {t.size}")
    engine = FusedRecurrence(op, np.ascontiguousarray(x), scale, threads)
    tail, info = _expand(engine, t, bound, tol, max_degree, float(np.finfo(op.dtype).eps))
    return engine.result(tail), info


class _TorchRecurrence:
    """The recurrence through a torch ``step`` callable (any device).

    The interface is :class:`~manifoldmp.spectral.fused.FusedRecurrence`'s.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 first: Callable[[torch.Tensor], torch.Tensor] | None, z: torch.Tensor,
                 real: torch.dtype) -> None:
        self.step, self.first, self.z, self.real = step, first, z, real
        self.work = None if z.device.type == "cpu" else torch.empty(   # see column_real_dot
            z.shape[0], z.shape[1] * (2 if z.is_complex() else 1), dtype=real, device=z.device)
        self.y: torch.Tensor | None = None
        self.prev: torch.Tensor | None = None
        self.cur = z
        self.done = 0

    def _norms(self, a: torch.Tensor) -> np.ndarray:
        out = column_real_dot(a, a, workspace=self.work).sqrt_()
        return out.cpu().numpy().astype(np.float64)

    def input_norms(self) -> np.ndarray:
        return self._norms(self.z)

    def output_norms(self) -> np.ndarray:
        return self._norms(self.y)

    def advance(self, degree: int, coef: np.ndarray) -> None:
        z, step = self.z, self.step
        ct = torch.tensor(coef[: degree + 1], dtype=self.real, device=z.device).to(z.dtype)
        if self.y is None:
            self.y = z * ct[0][None, :]
        for k in range(self.done + 1, degree + 1):
            if k == 1:
                nxt = self.first(z) if self.first is not None else \
                    0.5 * step(z, torch.zeros_like(z))
            elif k == 2:
                nxt = step(self.cur, z.clone())   # y_2 = S y_1 - y_0, into a copy of z
            else:
                nxt = step(self.cur, self.prev)   # y_k = S y_{k-1} - y_{k-2}, into y_{k-2}
            self.y.addcmul_(nxt, ct[k][None, :])
            self.prev, self.cur = self.cur, nxt
        self.done = max(self.done, degree)

    def result(self, tail: np.ndarray) -> torch.Tensor:
        z = self.z
        self.y.addcmul_(z, torch.tensor(tail, dtype=self.real, device=z.device).to(z.dtype)
                        [None, :])
        return self.y


def _expand(engine: Any, t: np.ndarray, bound: float, tol: float, max_degree: int,
            eps: float) -> tuple[np.ndarray, ChebyshevInfo]:
    """Degree rule and bound of :func:`chebyshev_expm` on a recurrence ``engine``.

    Returns the tail to add to the constant term (``tail_m`` per column) and the info.
    """
    bound = validate_positive(bound, "bound")
    tol = validate_positive(tol, "tol")
    max_degree = validate_int(max_degree, "max_degree", minimum=0)
    C = t.size
    w = _check_w(0.5 * bound * t.astype(np.float64).reshape(C))
    znorm = engine.input_norms()
    coef, tail = _all_coefficients(w, max_degree)     # computed once per call
    degree = _first_degree(tail, tol, eps)
    if degree is None:
        raise ChebyshevNotConverged(
            f"the Chebyshev degree for tol={tol:.1e} at t b = {2 * float(w.max()):.3g} exceeds "
            f"max_degree={max_degree}; use the Lanczos, spectral or implicit method")
    while True:
        engine.advance(degree, coef)
        # the bound relative to the output: ||exp(-tB) z|| >= ||y|| - 2 tail ||z||
        ynorm = engine.output_norms()
        err_abs = 2.0 * tail[degree] * znorm
        floor = ROUNDING * max(degree, 1) * eps * znorm
        lower = np.maximum(ynorm - err_abs - floor, 0.0)
        if np.all((err_abs + floor <= tol * lower) | (err_abs <= floor)):
            break
        want = np.where(znorm > 0, (tol * lower - floor) / np.where(znorm > 0, znorm, 1.0), 1.0)
        new = _first_degree(tail, want, eps)
        if new is None:
            raise ChebyshevNotConverged(
                f"the Chebyshev degree for tol={tol:.1e} relative to an output "
                f"{float(np.min(ynorm / np.where(znorm > 0, znorm, 1.0))):.1e} times the input "
                f"exceeds max_degree={max_degree}; use the Lanczos or spectral method")
        if new <= degree:   # the rounding floor: nothing more to gain
            break
        degree = new
    # p_m(0) = 1 exactly: add the tail to the constant term (module docstring)
    err_abs = (2.0 * tail[degree] + ROUNDING * max(degree, 1) * eps) * znorm
    with np.errstate(divide="ignore", invalid="ignore"):   # no digit guaranteed: infinite
        rel = np.where(znorm > 0, np.where(ynorm > err_abs, err_abs / (ynorm - err_abs), np.inf),
                       0.0)
    err = float(rel.max()) if rel.size else 0.0
    if err > tol:
        log.info("chebyshev: tol %.1e is below the rounding level; bound %.1e at degree %d",
                 tol, err, degree)
    log.debug("chebyshev: degree %d, bound %.1e (t b up to %.3g)", degree, err,
              2 * float(w.max()) if w.size else 0.0)
    return tail[degree], ChebyshevInfo(degree, err, float(bound))


def shifted_step(S: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(X, Y) -> S X - Y`` for a sparse CSR ``S``, written into ``Y`` on CPU.

    On CPU this is MKL's threaded ``C = alpha A B + beta C`` through ``addmm`` with
    ``beta = -1`` into the block it replaces (no fresh pages); on CUDA the plain ``addmm``.
    """
    def step(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        if X.device.type != "cpu":
            return torch.addmm(Y, S, X, beta=-1)
        return torch.addmm(Y, S, X, beta=-1, out=Y)
    return step


def stacked_real(S: sp.spmatrix) -> sp.csr_matrix:
    """``[[Re S, -Im S], [Im S, Re S]]``: the real ``(2V, 2V)`` form acting on ``[Re z; Im z]``.

    The Chebyshev recurrence runs on it for complex features: MKL's real sparse product of a
    ``(2V, C)`` block is faster than its complex product of the same ``(V, C)`` data (100k
    torus, 64 channels: 21 against 30 ms), for the same bytes of dense data.
    """
    S = sp.csr_matrix(S)
    out = sp.bmat([[S.real, -S.imag], [S.imag, S.real]], format="csr")
    out.eliminate_zeros()   # the imaginary part's structural zeros (its diagonal): 7 % of nnz
    return out


def heat_chebyshev(S: torch.Tensor, bound: float, sqrt_mass: torch.Tensor, x: torch.Tensor,
                   t: torch.Tensor, *, tol: float, max_degree: int = 20000,
                   wide: Callable[[torch.Tensor], tuple[Any, ...]] | None = None,
                   fused: FusedOperator | None = None) -> tuple[torch.Tensor, ChebyshevInfo]:
    """``exp(-t M^-1 L) x = M^-1/2 exp(-t B) M^1/2 x`` by :func:`chebyshev_expm`, no autograd.

    Parameters
    ----------
    S : (V, V) or (2V, 2V) sparse CSR Tensor or None
        ``(4 / bound) B - 2 I`` with ``B = M^-1/2 L M^-1/2`` (None only with a ``fused``
        operator that takes ``x``), on ``x``'s device: complex of ``x``'s dtype, or real of its
        precision, either ``(V, V)`` (a real operator: the real and imaginary parts of complex
        ``x`` flow separately, as interleaved real columns) or the ``(2V, 2V)``
        :func:`stacked_real` form of a complex operator.
    bound : float
        The ``b`` of ``S``: an upper bound on the spectrum of ``B``.
    sqrt_mass : (V,) real Tensor
        ``sqrt(m_i)``.
    x : (V, C) Tensor
    t : (C,) real Tensor
        Non-negative times, one per column.
    tol : float
        Relative tolerance on the output.
    max_degree : int
    wide : callable, optional
        ``x64 -> (S, sqrt_mass)`` or ``(S, sqrt_mass, fused)`` in float64, given ``x`` in float64
        (``S`` None only with a ``fused`` that takes ``x64``). When ``x`` is float32 and the
        stated bound exceeds ``max(tol, FLOAT32_ACCURACY)``, the flow is redone with these and
        returned in ``x``'s dtype (the info is the float64 run's).
    fused : FusedOperator, optional
        The same ``S`` (not stacked) for the fused CPU kernels
        (:func:`chebyshev_expm_fused`): used instead of ``S`` when ``x`` is on the CPU, of its
        precision and wide enough (:data:`~manifoldmp.spectral.fused.MIN_INPUT_ROW_BYTES`,
        complex operators :data:`~manifoldmp.spectral.fused.MIN_COMPLEX_INPUT_ROW_BYTES`; any
        width when ``S`` is None).

    Returns
    -------
    y : (V, C) Tensor
    info : ChebyshevInfo
    """
    target = max(tol, FLOAT32_ACCURACY)
    single = x.dtype in (torch.float32, torch.complex64)
    narrow = wide is not None and single
    if narrow and _float32_cannot_reach(bound, t, tol, target, max_degree):
        log.debug("chebyshev: the float32 rounding floor alone exceeds %.1e; float64 recurrence",
                  target)
    else:
        y, info = _run(S, bound, sqrt_mass, x, t, tol, max_degree, fused)
        if not narrow or info.error_bound <= target:
            _warn_missed(info, tol, FLOAT32_ACCURACY if single else LOSS_WARNING)
            return y, info
    # the float32 rounding floor, relative to a small output (long times): float64 recurrence
    x64 = x.detach().to(torch.complex128 if x.is_complex() else torch.float64)
    S64, s64, *more = wide(x64)
    y64, info = _run(S64, bound, s64, x64, t.double(), target, max_degree,
                     more[0] if more else None)
    log.debug("chebyshev: float32 bound above %.1e; recomputed in float64 (bound %.1e)",
              target, info.error_bound)
    _warn_missed(info, target, LOSS_WARNING)
    return y64.to(x.dtype), info


#: A heat flow whose final Chebyshev bound exceeds both ``tol`` and this is logged as a
#: warning (below it, a ``tol`` under working precision is only logged as information).
LOSS_WARNING = 1e-8


def _warn_missed(info: ChebyshevInfo, tol: float, floor: float) -> None:
    """Warn when the stated bound misses ``tol`` by more than working precision explains.

    The recurrence's rounding is relative to the input; where the output is much smaller
    (long times, or ``n != 0`` with its positive spectrum) the bound relative to the output can
    exceed 1: icosphere(5), ``n = 1``, ``t = 30`` (output ``e^-30`` of the input) came back 611
    times off with only an information message before.
    """
    if info.error_bound > max(tol, floor):
        log.warning("chebyshev: stated error bound %.1e misses tol %.1e (degree %d): the output "
                    "is much smaller than the input and the recurrence's rounding, relative to "
                    "the input, dominates; method='krylov' (tolerance relative to the output) "
                    "or 'spectral' meet it", info.error_bound, tol, info.degree)


def _float32_cannot_reach(bound: float, t: torch.Tensor, tol: float, target: float,
                          max_degree: int) -> bool:
    """Whether a float32 recurrence is bound to miss ``target``, known before running it.

    Its stated error is at least the rounding floor ``ROUNDING m eps`` times
    ``||z|| / ||y||``, and the heat flow does not grow ``z``: so once the floor at the first
    degree ``m`` the rule picks exceeds ``target``, the float32 run would only be redone in
    float64. With ``FLOAT32_ACCURACY = 1e-5`` that is every degree above 21 (the layers'
    learned times on 15k-20k-vertex meshes: degree 280-300, floor 1.3e-4). The coefficients
    it computes are the float64 run's (same times), so they are computed once
    (:func:`_all_coefficients` keeps them).
    """
    w = 0.5 * float(bound) * t.detach().cpu().double().numpy().reshape(-1)
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        return False   # the run itself reports bad times
    eps = float(np.finfo(np.float32).eps)
    _, tail = _all_coefficients(w, max_degree)
    degree = _first_degree(tail, tol, eps)
    return degree is not None and ROUNDING * max(degree, 1) * eps > target


def _run(S: torch.Tensor | None, bound: float, sqrt_mass: torch.Tensor, x: torch.Tensor,
         t: torch.Tensor, tol: float, max_degree: int, fused: FusedOperator | None
         ) -> tuple[torch.Tensor, ChebyshevInfo]:
    """One flow in ``x``'s precision: the fused kernels where they take ``x``, else ``S``."""
    use_fused = fused is not None and _fused_fits(fused, x, any_width=S is None)
    if S is None and not use_fused:
        raise ParameterError("S may be None only with a fused operator that takes x (on the "
                             f"CPU, of its precision and size); x is {tuple(x.shape)} "
                             f"{x.dtype} on {x.device}")
    if use_fused:
        y_np, info = chebyshev_expm_fused(
            fused, x.detach().resolve_conj().numpy(), sqrt_mass.detach().cpu().numpy(),
            t.detach().cpu().numpy(), bound, tol=tol, max_degree=max_degree)
        return torch.from_numpy(y_np), info
    return _heat_chebyshev(S, bound, sqrt_mass, x, t, tol=tol, max_degree=max_degree)


def _fused_fits(op: FusedOperator, x: torch.Tensor, *, any_width: bool = False) -> bool:
    """Whether the fused kernels take ``x``, and are worth it.

    ``x`` must be on the CPU, of ``op``'s precision, complex for a complex ``op``, and (unless
    ``any_width``) at least :data:`~manifoldmp.spectral.fused.MIN_INPUT_ROW_BYTES` wide per row
    for a real ``op``, :data:`~manifoldmp.spectral.fused.MIN_COMPLEX_INPUT_ROW_BYTES` for a
    complex one (narrower blocks are faster through torch's product).
    """
    real = np.float32 if x.dtype in (torch.float32, torch.complex64) else np.float64
    least = (_fused_mod.MIN_COMPLEX_INPUT_ROW_BYTES if op.is_complex
             else _fused_mod.MIN_INPUT_ROW_BYTES)
    return (x.device.type == "cpu" and x.dim() == 2 and np.dtype(real) == op.dtype
            and (x.is_complex() or not op.is_complex) and x.shape[0] == op.n
            and (any_width or x.shape[1] * x.element_size() >= least))


def _heat_chebyshev(S: torch.Tensor, bound: float, sqrt_mass: torch.Tensor, x: torch.Tensor,
                    t: torch.Tensor, *, tol: float, max_degree: int
                    ) -> tuple[torch.Tensor, ChebyshevInfo]:
    """:func:`heat_chebyshev` in the precision of ``S``."""
    V, C = x.shape
    real = torch.float32 if S.dtype in (torch.float32, torch.complex64) else torch.float64
    s = sqrt_mass[:, None].to(device=x.device, dtype=real)
    x = x.detach()
    real_op = not S.is_complex()
    if x.is_complex() and real_op and S.shape[0] == 2 * V:
        # [Re z; Im z] written straight into one block (no complex temporary, no cat)
        zr, tr = torch.empty(2 * V, C, dtype=S.dtype, device=x.device), t
        torch.mul(x.real, s, out=zr[:V])
        torch.mul(x.imag, s, out=zr[V:])
    elif x.is_complex() and real_op:
        zr, tr = torch.view_as_real(x * s).reshape(V, 2 * C), t.repeat_interleave(2)
    elif not x.is_complex() and S.shape[0] == 2 * V:
        zr, tr = torch.zeros(2 * V, C, dtype=S.dtype, device=x.device), t
        torch.mul(x, s, out=zr[:V])
    else:
        zr, tr = (x * s).to(S.dtype), t
    y, info = chebyshev_expm(shifted_step(S), zr, tr, bound, tol=tol, max_degree=max_degree,
                             first=lambda X: torch.addmm(X, S, X, beta=0, alpha=0.5))
    if y.shape[0] == 2 * V and x.is_complex():
        out = torch.empty(V, C, dtype=x.dtype, device=x.device)
        parts = torch.view_as_real(out)
        torch.div(y[:V], s, out=parts[..., 0])
        torch.div(y[V:], s, out=parts[..., 1])
        return out, info
    if y.shape[0] == 2 * V:
        y = y[:V]
    elif x.is_complex() and not y.is_complex():
        y = torch.view_as_complex(y.reshape(V, C, 2))
    return y.to(x.dtype).div_(s.to(x.dtype)), info
