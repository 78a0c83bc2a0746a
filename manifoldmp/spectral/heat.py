"""Heat semigroup of a bundle operator: ``exp(-t (M^-1 L_n + kappa n^2))`` (THEORY.md 3.2, 3.3).

:class:`HeatKernel` is the stateful solver (eigenpairs, factorizations and device copies are
built on first use and kept); :func:`heat_diffuse` is the one-shot function beside it.

Three methods, one semantics:

``spectral``
    ``Phi diag(exp(-t (lambda + kappa n^2))) Phi^H M x`` with the ``k`` smallest generalized
    eigenpairs (:func:`~manifoldmp.spectral.eigen.generalized_eigsh`). Exact on the span of
    ``Phi``; the discarded part is damped by at least ``exp(-t lambda_k)``
    (:meth:`HeatKernel.truncation_bound`). With ``k = V`` it is exact.
``krylov``
    Lanczos on ``M^-1/2 L M^-1/2`` (:func:`~manifoldmp.spectral.krylov.lanczos_expm`), all
    channels at once, in torch (runs wherever the tensors live, CUDA included), stopped at the
    relative tolerance ``tol``. It adapts to the discrete low end of the spectrum at long
    times. On the CPU, inputs of at least 128 bytes per row (32 for complex types) run the
    same iteration on the fused kernels
    (:func:`~manifoldmp.spectral.krylov.lanczos_expm_fused`; :attr:`FUSED`).
``chebyshev``
    The Chebyshev expansion of ``exp(-t lambda)`` on ``[0, b]`` with ``b`` a rigorous bound on
    the spectrum (:func:`~manifoldmp.spectral.chebyshev.spectrum_bound`;
    :func:`~manifoldmp.spectral.chebyshev.chebyshev_expm`): one sparse product per
    degree and no inner products, in torch (on the CPU, wide inputs on the fused kernels of
    :mod:`~manifoldmp.spectral.fused`); its degree is known in advance
    (:meth:`HeatKernel.chebyshev_degree`) and its error bound is a-priori and rigorous
    (``KrylovInfo``-like :attr:`HeatKernel.last_chebyshev`). Fastest at short and moderate
    times ``t b``; it keeps constants stationary exactly.
``implicit``
    ``steps`` steps of an L-stable SDIRK scheme with one sparse LU of ``M + gamma tau L`` reused
    by every stage, step and call with the same ``tau``
    (:mod:`~manifoldmp.spectral.implicit`); its error is bounded by
    :meth:`HeatKernel.implicit_error_bound`. Factorizations run on the CPU (SuperLU); CUDA
    inputs are solved there and moved back.

The Casimir factor ``exp(-t kappa n^2)`` commutes with everything and is applied exactly by all
methods. Every method is differentiable in ``x`` and ``t`` through autograd: the backward pass
of a heat application is a heat application (``grad_x = M H(t) M^-1 grad_y``, ``grad_t =
-Re <grad_y, (A + kappa n^2) y>``), except the SDIRK schemes of order 2 and 3, which are
differentiable in ``x`` only.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from manifoldmp.errors import ParameterError
from manifoldmp.mesh.validate import validate_choice, validate_int, validate_positive
from manifoldmp.operators.laplacian import _check_domain, connection_laplacian
from manifoldmp.operators.sparse import all_finite, column_real_dot, complex_dtype
from manifoldmp.spectral.chebyshev import (
    ChebyshevInfo,
    _fused_fits,
    chebyshev_degree,
    heat_chebyshev,
    spectrum_bound,
    stacked_real,
)
from manifoldmp.spectral.eigen import (
    DENSE_LIMIT,
    EigenResult,
    fill_reducing_ordering,
    generalized_eigsh,
)
from manifoldmp.spectral.fused import FusedOperator, fused_available
from manifoldmp.spectral.implicit import (
    SCHEMES,
    error_bound,
    factorize_in_parallel,
    factorize_shifted,
    sdirk_steps,
)
from manifoldmp.spectral.krylov import KrylovInfo, csr_product, heat_lanczos

__all__ = ["HeatKernel", "heat_diffuse"]

log = logging.getLogger(__name__)

#: Largest Chebyshev degree a call may use (``t b`` about ``2e7`` at ``tol = 1e-8``).
CHEBYSHEV_MAX_DEGREE = 20000


Method = Literal["auto", "spectral", "krylov", "chebyshev", "implicit"]
METHODS = ("auto", "spectral", "krylov", "chebyshev", "implicit")



class HeatKernel:
    """Stateful heat solver of the type-``n`` bundle operator of a domain.

    Parameters
    ----------
    domain : Surface or PointCloud
    n : int
        SO(2) type; features are real for ``n = 0`` and complex otherwise.
    method : {"auto", "spectral", "krylov", "chebyshev", "implicit"}
        ``auto`` picks per call (see :meth:`choose_method`) and logs its choice.
    casimir : float
        Non-negative Casimir coefficient ``kappa`` (THEORY.md 2.3).
    k : int, optional
        Number of eigenpairs of the spectral method (default ``min(V, 128)``; ``V`` for
        ``V <= 2500``, where the dense solve is cheap and exact).
    tol : float
        Relative tolerance of the Krylov stopping rule, of the Chebyshev degree and of the
        ``auto`` decision.
    scheme : {"euler", "sdirk2", "sdirk3"}
        Implicit scheme.
    steps : int
        Implicit steps per call (``tau = t / steps``).
    device : torch.device or str, optional
        Where the operators live and the work happens (default CPU).
    dtype : torch.dtype
        Real precision, ``torch.float64`` (default) or ``torch.float32``; complex work uses the
        matching complex dtype. Inputs are cast to it. A float32 Chebyshev flow whose stated
        bound would exceed ``max(tol, 1e-5)`` (its rounding floor grows with the degree: every
        degree above 21) runs its recurrence in float64 and returns float32
        (:data:`~manifoldmp.spectral.chebyshev.FLOAT32_ACCURACY`).

    Examples
    --------
    >>> import torch, manifoldmp as mmp
    >>> S = mmp.meshes.icosphere(2)
    >>> H = mmp.HeatKernel(S, method="krylov")
    >>> u = H(torch.ones(S.n_vertices, 1, dtype=torch.float64), 0.1)
    >>> float((u - 1).abs().max()) < 1e-10   # constants are stationary
    True
    """

    def __init__(self, domain: Any, n: int = 0, *, method: Method = "auto", casimir: float = 0.0,
                 k: int | None = None, tol: float = 1e-8, scheme: str = "sdirk2",
                 steps: int = 1, device: Any = None, dtype: torch.dtype = torch.float64) -> None:
        _check_domain(domain)
        self.domain = domain
        self.n = validate_int(n, "n")
        self.method = validate_choice(method, "method", METHODS)
        if isinstance(casimir, bool) or not isinstance(casimir, (int, float, np.floating)) \
                or not math.isfinite(casimir) or casimir < 0:
            raise ParameterError(f"casimir must be a finite number >= 0, got {casimir!r}")
        self.casimir = float(casimir)
        V = domain.n_vertices
        if k is None:
            k = V if V <= DENSE_LIMIT else min(V, 128)
        self.k = validate_int(k, "k", minimum=1)
        if self.k > V:
            raise ParameterError(f"k must be at most the number of vertices {V}, got {self.k}")
        self.tol = validate_positive(tol, "tol")
        self.scheme = validate_choice(scheme, "scheme", tuple(SCHEMES))
        self.steps = validate_int(steps, "steps", minimum=1)
        if dtype not in (torch.float32, torch.float64):
            raise ParameterError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device='cuda' requested but torch has no CUDA device")
        self._eig: EigenResult | None = None
        self._eig_t: tuple[torch.Tensor, torch.Tensor] | None = None
        self._L: sp.csr_matrix | None = None
        self._bound: float | None = None
        self._torch_B: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._torch_S: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._fused_S: dict[Any, FusedOperator] = {}
        self._factors: dict[float, Any] = {}
        self._ordering: np.ndarray | None = None
        self.last_method: str | None = None
        self.last_krylov: KrylovInfo | None = None
        self.last_chebyshev: ChebyshevInfo | None = None

    # ------------------------------------------------------------------ lazy state
    @property
    def n_vertices(self) -> int:
        """Number of vertices ``V`` of the domain."""
        return int(self.domain.n_vertices)

    @property
    def mass(self) -> np.ndarray:
        """``(V,)`` lumped masses (float64 numpy)."""
        return np.asarray(self.domain._mass(), dtype=np.float64)

    @property
    def laplacian(self) -> sp.csr_matrix:
        """``(V, V)`` weak connection Laplacian ``L_n`` (scipy, float64/complex128)."""
        if self._L is None:
            self._L = connection_laplacian(self.domain, self.n)
        return self._L

    @property
    def feature_dtype(self) -> torch.dtype:
        """Dtype of the features of this type: real for ``n = 0``, complex otherwise."""
        return self.dtype if self.n == 0 else complex_dtype(self.dtype)

    def _mass_t(self) -> torch.Tensor:
        return torch.tensor(self.mass, dtype=self.dtype, device=self.device)

    @property
    def casimir_shift(self) -> float:
        """``kappa n^2``: the constant added to every eigenvalue."""
        return self.casimir * self.n * self.n

    def spectral_bound(self) -> float:
        """Rigorous upper bound on the spectrum of ``M^-1 L_n`` (without the Casimir shift).

        :func:`~manifoldmp.spectral.chebyshev.spectrum_bound`: Collatz-Wielandt bounds of
        ``|M^-1/2 L M^-1/2|`` by power iteration, starting from the smaller of two Gershgorin
        bounds. On the shared meshes it is within 0.02-1.7 % of ``lambda_max``, where the
        Gershgorin bounds are 18-37 % above it (on very regular meshes less is gained: 16-29 %
        above on icospheres, against 41-46 %); the Chebyshev degree and the implicit steps'
        stated error bound shrink accordingly.
        """
        if self._bound is None:
            self._bound = spectrum_bound(self.laplacian, self.mass)
        return self._bound

    def eigenpairs(self, *, as_torch: bool = False) -> tuple[Any, Any]:
        """The ``k`` smallest generalized eigenpairs of ``(L_n, M)`` (computed once, cached).

        Returns
        -------
        eigenvalues : (k,) ndarray or Tensor
            Ascending, of ``L_n`` (without the Casimir shift).
        eigenvectors : (V, k) ndarray or Tensor
            ``M``-orthonormal (``Phi^H M Phi = I``).
        """
        if self._eig is None:
            self._eig = generalized_eigsh(self.laplacian, self.mass, self.k)
            log.info("heat kernel n=%d: %d eigenpairs, max residual %.1e", self.n, self.k,
                     float(np.max(self._eig.residuals)))
        if not as_torch:
            return self._eig.eigenvalues, self._eig.eigenvectors
        if self._eig_t is None:
            lam = torch.as_tensor(self._eig.eigenvalues, dtype=self.dtype, device=self.device)
            phi = torch.as_tensor(self._eig.eigenvectors, device=self.device)
            self._eig_t = (lam, phi.to(self.feature_dtype))
        return self._eig_t

    def truncation_bound(self, t: float) -> float:
        """Relative bound ``exp(-t (lambda_k + kappa n^2))`` on what the spectral method drops.

        For any ``x`` the spectral result differs from the exact semigroup by
        ``exp(-t A) (I - Phi Phi^H M) x``, whose ``M``-norm is at most this number times
        ``||(I - Phi Phi^H M) x||_M`` (zero when ``k = V``).
        """
        lam, _ = self.eigenpairs()
        if self.k == self.n_vertices:
            return 0.0
        return float(math.exp(-t * (lam[-1] + self.casimir_shift)))

    def implicit_error_bound(self, t: float) -> float:
        """Bound on ``||u_implicit - u_exact||_M / ||x||_M`` for time ``t`` (implicit module)."""
        return error_bound(float(t), self.steps, self.scheme, self.spectral_bound())

    def _symmetric(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``B = M^-1/2 L M^-1/2`` as a torch CSR tensor (cached per device and dtype)."""
        key = (device, dtype)
        B = self._torch_B.get(key)
        if B is None:
            from manifoldmp.operators.sparse import to_torch_sparse
            s = 1.0 / np.sqrt(self.mass)
            Bs = (sp.diags(s) @ self.laplacian @ sp.diags(s)).tocsr()
            B = to_torch_sparse(Bs, device=device).to(dtype)
            self._torch_B[key] = B
        return B

    def _shifted_scipy(self) -> sp.csr_matrix:
        """``S = (4 / b) B - 2 I`` as a scipy matrix, complex for ``n != 0`` (not stacked)."""
        s = 1.0 / np.sqrt(self.mass)
        B = sp.diags(s) @ self.laplacian @ sp.diags(s)
        Ss = ((4.0 / self.spectral_bound()) * B
              - 2.0 * sp.identity(self.n_vertices, format="csr")).tocsr()
        Ss.sum_duplicates()
        return Ss

    def _shifted(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``S = (4 / b) B - 2 I`` of the Chebyshev recurrence, real (cached per device, dtype).

        ``(V, V)`` for ``n = 0``; for ``n != 0`` the ``(2V, 2V)`` stacked real form
        (:func:`~manifoldmp.spectral.chebyshev.stacked_real`), whose real product is faster.
        """
        real = torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64
        key = (device, real)
        S = self._torch_S.get(key)
        if S is None:
            from manifoldmp.operators.sparse import to_torch_sparse
            Ss = self._shifted_scipy()
            if np.iscomplexobj(Ss.data):
                Ss = stacked_real(Ss)
            S = to_torch_sparse(Ss, device=device).to(real)
            self._torch_S[key] = S
        return S

    def _fused(self, x: torch.Tensor) -> FusedOperator | None:
        """``S`` for the fused CPU kernels (:mod:`~manifoldmp.spectral.fused`), or None.

        None on other devices, without numba or in a forked child (:func:`fused_available`),
        when :attr:`FUSED` is off (the tests set it to compare with the torch recurrence), or
        for an input too narrow to gain (:func:`~manifoldmp.spectral.chebyshev._fused_fits`).
        """
        if not (self.FUSED and x.device.type == "cpu" and fused_available()):
            return None
        real = np.float32 if x.dtype in (torch.float32, torch.complex64) else np.float64
        op = self._fused_S.get(real)
        if op is None:
            op = FusedOperator.from_scipy(self._shifted_scipy(), real)
            self._fused_S[real] = op
        return op if _fused_fits(op, x) else None

    def _apply_B(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``M^-1/2 L M^-1/2 X`` for ``X : (V, C)`` on the solver's device (into ``out``)."""
        return csr_product(self._symmetric(X.device, X.dtype), X, out)

    # ------------------------------------------------------------------ methods
    def krylov_steps_estimate(self, t: float) -> int:
        """A-priori bound on the Lanczos steps to reach ``tol`` at time ``t``.

        Hochbruck and Lubich (SIAM J. Numer. Anal. 34, 1997, theorem 2): for a spectrum in
        ``[0, 4 rho]`` the error after ``m`` steps is at most ``10 exp(-m^2 / (5 rho))``, so
        ``m = sqrt(5 rho ln(10 / tol))`` with ``4 rho = t * spectral_bound()``. It is the
        degree of the best uniform polynomial approximation of ``exp(-t lambda)`` on the whole
        interval, so at long times, where Lanczos adapts to the discrete low end of the
        spectrum, it over-estimates (icosphere(4), ``t Lambda = 5700``, ``tol = 1e-6``: 97 steps
        taken, 341 predicted); at short times the stopping rule's spaced checks add about a
        third (100k-vertex torus, ``t Lambda = 34``: 38 taken, 26 predicted).
        """
        rho = 0.25 * validate_positive(t, "t", allow_zero=True) * self.spectral_bound()
        return math.ceil(max(math.sqrt(5.0 * rho * math.log(10.0 / self.tol)), 1.0))

    def chebyshev_degree(self, t: float) -> int:
        """Degree of the Chebyshev method for time ``t`` at ``tol`` relative to the input.

        Exact, from the Bessel coefficients (:mod:`~manifoldmp.spectral.chebyshev`): one
        sparse product per degree. A call may go some degrees further when its output is much
        smaller than its input (the tolerance is relative to the output).
        """
        t = validate_positive(t, "t", allow_zero=True)
        eps = float(torch.finfo(self.dtype).eps)
        return chebyshev_degree(np.array([0.5 * t * self.spectral_bound()]), self.tol,
                                max_degree=CHEBYSHEV_MAX_DEGREE, eps=eps)

    def weyl_truncation_estimate(self, t: float) -> float:
        """``exp(-t lambda_k)`` with ``lambda_k`` predicted by Weyl's law, before any eigensolve.

        ``N(lambda) ~ c + area lambda / (4 pi)`` for a surface of ``c`` components (the same
        leading term for every bundle type), so ``lambda_k ~ 4 pi (k - c) / area``.
        """
        t = validate_positive(t, "t", allow_zero=True)
        c = int(getattr(self.domain, "n_components", 1)) if self.n == 0 else 0
        lam_k = 4.0 * math.pi * max(self.k - c, 0) / float(np.sum(self.mass))
        return math.exp(-t * (lam_k + self.casimir_shift))

    def choose_method(self, t: torch.Tensor) -> str:
        """The method ``auto`` uses for times ``t`` (and why, in the log).

        1. Spectral when the eigenpairs are exact (``k = V``, small problems) or already
           computed and ``exp(-t_min lambda_k)`` is below ``tol`` (long times: few modes
           survive).
        2. Otherwise Chebyshev, which needs no precomputation, costs one sparse product per
           degree and whose degree (:meth:`chebyshev_degree`, growing like ``sqrt(t b)``) is
           known in advance, unless the degree exceeds :attr:`STIFF_STEPS` (long times on
           fine or badly shaped meshes). Then: spectral if Weyl's law predicts that ``k``
           eigenpairs cover ``t_min`` at ``tol`` (checked again on the computed eigenvalues);
           implicit if its stated error bound (:meth:`implicit_error_bound`) is below ``tol``
           at every time; Lanczos (``krylov``, which adapts to the few modes that survive at
           long times) with a warning that says what to change, otherwise.
        """
        if self.method != "auto":
            return self.method
        tmin = float(t.min()) if t.numel() else 0.0
        tmax = float(t.max()) if t.numel() else 0.0
        if self.k == self.n_vertices:
            choice, why = "spectral", f"k = V = {self.k}: the eigenbasis is exact"
        elif self._eig is not None and self.truncation_bound(tmin) <= self.tol:
            choice, why = "spectral", (f"cached eigenpairs, truncation bound "
                                       f"{self.truncation_bound(tmin):.1e} <= tol")
        elif (degree := self.chebyshev_degree(tmax)) <= self.STIFF_STEPS:
            tb = tmax * self.spectral_bound()
            choice, why = "chebyshev", (f"degree {degree} (t b = {tb:.3g}) and no exact or "
                                        "cached eigenbasis covers t at this tolerance")
        else:
            choice, why = self._stiff_choice(t, tmin, degree)
        log.info("HeatKernel(method='auto') picked %s: %s", choice, why)
        return choice

    #: Above this Chebyshev degree ``auto`` looks for a cheaper method. Measured against
    #: Lanczos with 16 channels, both on the fused CPU kernels, tol 1e-8, icosphere(6): up to
    #: about this degree Chebyshev is faster even where Lanczos adapts to the few surviving
    #: modes (a Lanczos step costs about three degrees: two passes over memory and a second
    #: pass that regenerates the basis); beyond, Lanczos wins. ``n = 0``: ``t = 0.3``, degree
    #: 447 in 0.35 s against 330 steps in 1.0 s; ``t = 3``, degree 1478 in 1.15 s against
    #: 471 steps in 1.3 s; ``t = 30``, degree 4660 in 3.5 s against 1.2 s. ``n = 1``:
    #: ``t = 3``, degree 1505 in 2.2 s against 371 steps in 1.7 s; ``t = 30``, 6.8 against
    #: 1.65 s.
    STIFF_STEPS = 1000
    #: The Chebyshev and Lanczos methods run on the fused CPU kernels
    #: (:mod:`~manifoldmp.spectral.fused`) where they apply; False keeps torch's sparse
    #: products (the reference in the tests).
    FUSED = True

    def _stiff_choice(self, t: torch.Tensor, tmin: float, degree: int) -> tuple[str, str]:
        stiff = f"stiff: Chebyshev degree {degree} (t ||A|| = " \
                f"{float(t.max()) * self.spectral_bound():.2g})"
        if self._eig is None and self.weyl_truncation_estimate(tmin) <= self.tol:
            if self.truncation_bound(tmin) <= self.tol:  # computes the eigenpairs
                return "spectral", (f"{stiff}; {self.k} eigenpairs cover t_min = {tmin:.3g} "
                                    f"(truncation bound {self.truncation_bound(tmin):.1e})")
            log.info("HeatKernel: Weyl's law predicted that %d eigenpairs suffice at t = %.3g, "
                     "the computed ones give %.1e > tol", self.k, tmin,
                     self.truncation_bound(tmin))
        times = np.unique(t.detach().cpu().numpy())
        worst = max((self.implicit_error_bound(float(tv)) for tv in times), default=0.0)
        if worst <= self.tol:
            return "implicit", f"{stiff}; implicit error bound {worst:.1e} <= tol"
        log.warning(
            "HeatKernel: %s; running Krylov (Lanczos) anyway. Faster: a larger k for the "
            "spectral method (exp(-t_min lambda_k) <= tol needs lambda_k >= %.3g), or "
            "method='implicit' with enough steps for its error bound", stiff,
            math.log(1.0 / self.tol) / max(tmin, 1e-300) - self.casimir_shift)
        return "krylov", f"{stiff}; neither the spectral nor the implicit method meets tol"

    def _check_x(self, x: Any) -> tuple[torch.Tensor, bool, bool, Any]:
        was_numpy = not isinstance(x, torch.Tensor)
        if was_numpy:
            x = torch.as_tensor(np.asarray(x))
        squeeze = x.dim() == 1
        if squeeze:
            x = x[:, None]
        if x.dim() != 2 or x.shape[0] != self.n_vertices:
            raise ParameterError(
                f"x must have shape (V,) or (V, C) with V = {self.n_vertices}, got "
                f"{tuple(x.shape)}")
        if self.n != 0 and not x.is_complex():
            raise ParameterError(
                f"type-{self.n} features are complex (one complex number per vertex and "
                f"channel); got real dtype {x.dtype}")
        in_dtype = x.dtype
        target = complex_dtype(self.dtype) if x.is_complex() else self.dtype
        x = x.to(device=self.device, dtype=target)
        if not all_finite(x):
            raise ParameterError("x contains NaN or infinite values")
        return x, squeeze, was_numpy, in_dtype

    def _check_t(self, t: Any, C: int) -> torch.Tensor:
        tt = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t, dtype=float))
        tt = tt.to(device=self.device, dtype=self.dtype)
        if tt.dim() == 0:
            tt = tt.expand(C)
        elif tt.shape != (C,):
            raise ParameterError(f"t must be a scalar or have one time per channel ({C},), got "
                                 f"shape {tuple(tt.shape)}")
        if not bool(torch.isfinite(tt).all()) or bool((tt < 0).any()):
            raise ParameterError(f"t must be finite and >= 0, got {tt.detach().cpu().numpy()}")
        return tt

    def __call__(self, x: Any, t: Any) -> Any:
        """Apply the semigroup: ``exp(-t (M^-1 L_n + kappa n^2)) x``.

        Parameters
        ----------
        x : (V,) or (V, C) Tensor or ndarray
            Real for ``n = 0`` (complex accepted: real and imaginary parts diffuse
            independently), complex for ``n != 0``.
        t : float or (C,) Tensor
            One time, or one per channel; ``>= 0``. A tensor with ``requires_grad`` gets
            gradients.

        Returns
        -------
        (V,) or (V, C) Tensor or ndarray
            Same kind and shape as ``x``, in the solver's precision.
        """
        x, squeeze, was_numpy, _ = self._check_x(x)
        C = x.shape[1]
        tt = self._check_t(t, C)
        method = self.choose_method(tt.detach())
        self.last_method = method
        if method == "spectral":
            y = self._spectral(x, tt)
        elif method in ("krylov", "chebyshev"):
            y = _HeatFunction.apply(x, tt, self, method)
        else:
            if tt.requires_grad and self.scheme != "euler":
                raise ParameterError(
                    f"the implicit scheme {self.scheme!r} is not differentiable in t; use "
                    "scheme='euler', method='spectral', 'chebyshev' or 'krylov'")
            y = _HeatFunction.apply(x, tt, self, "implicit")
        if self.casimir_shift:
            y = y * torch.exp(-tt * self.casimir_shift).to(y.dtype)
        if squeeze:
            y = y[:, 0]
        if was_numpy:
            return y.detach().cpu().numpy()
        return y

    def _spectral(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        lam, phi = self.eigenpairs(as_torch=True)
        if x.is_complex() and not phi.is_complex():
            phi = phi.to(x.dtype)
        m = self._mass_t()
        coef = phi.conj().T @ (m[:, None].to(x.dtype) * x)   # (k, C)
        decay = torch.exp(-lam[:, None] * t[None, :])        # (k, C)
        return phi @ (coef * decay.to(coef.dtype))

    def _raw(self, x: torch.Tensor, t: torch.Tensor, method: str) -> torch.Tensor:
        """Semigroup without autograd, without Casimir factor."""
        if method == "krylov":
            s = torch.as_tensor(np.sqrt(self.mass), dtype=self.dtype, device=x.device)
            fused = self._fused(x)

            def wide_krylov(x64: torch.Tensor) -> tuple[Any, ...]:   # float64 redo of float32
                f64 = self._fused(x64)
                return (None if f64 is not None else self._symmetric(x.device, x64.dtype),
                        torch.as_tensor(np.sqrt(self.mass), dtype=torch.float64,
                                        device=x.device), f64)

            y, info = heat_lanczos(
                None if fused is not None else self._symmetric(x.device, x.dtype), s, x, t,
                tol=self.tol, wide=wide_krylov, fused=fused, bound=self.spectral_bound())
            self.last_krylov = info
            return y
        if method == "chebyshev":
            s = torch.as_tensor(np.sqrt(self.mass), dtype=self.dtype, device=x.device)
            fused = self._fused(x)

            def wide(x64: torch.Tensor) -> tuple[Any, ...]:   # float64 redo of a float32 flow
                f64 = self._fused(x64)
                return (None if f64 is not None else self._shifted(x.device, torch.float64),
                        torch.as_tensor(np.sqrt(self.mass), dtype=torch.float64,
                                        device=x.device), f64)

            y, cinfo = heat_chebyshev(
                None if fused is not None else self._shifted(x.device, x.dtype),
                self.spectral_bound(), s, x, t, tol=self.tol,
                max_degree=CHEBYSHEV_MAX_DEGREE, wide=wide, fused=fused)
            self.last_chebyshev = cinfo
            return y
        return self._implicit(x, t)

    def _factor(self, coef: float) -> Any:
        self._prefactor([coef])
        return self._factors[coef]

    def _prefactor(self, coefs: Any) -> None:
        """Factor ``M + c L`` for every missing ``c``, two at a time (one shared ordering)."""
        missing = sorted({float(c) for c in coefs} - set(self._factors))
        if not missing:
            return
        if self._ordering is None:  # one ordering for every factorization (same pattern)
            self._ordering = fill_reducing_ordering(self.laplacian)
        L, mass, perm = self.laplacian, self.mass, self._ordering
        self._factors.update(factorize_in_parallel(
            {c: (lambda c=c: factorize_shifted(L, mass, c, perm=perm)) for c in missing}))

    def _resolvent(self, v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``(I + tau_c A)^-1 v_c = (M + tau_c L)^-1 M v_c`` per column (CPU factorization)."""
        vn = v.detach().cpu().numpy().astype(np.complex128 if v.is_complex() else np.float64)
        out = vn.copy()
        tn = tau.detach().cpu().numpy().astype(np.float64)
        self._prefactor(tn[tn != 0])
        for tv in np.unique(tn):
            if tv == 0:
                continue
            cols = np.flatnonzero(tn == tv)
            rhs = self.mass[:, None] * vn[:, cols]
            out[:, cols] = self._factor(float(tv)).solve(rhs)
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=v.device, dtype=v.dtype)

    def _implicit(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma = SCHEMES[self.scheme][0]
        xn = x.detach().cpu().numpy().astype(np.complex128 if x.is_complex() else np.float64)
        out = np.empty_like(xn)
        L = self.laplacian
        tn = t.detach().cpu().numpy().astype(np.float64)
        self._prefactor([gamma * (float(tv) / self.steps) for tv in np.unique(tn) if tv != 0])
        for tv in np.unique(tn):
            cols = np.flatnonzero(tn == tv)
            if tv == 0:
                out[:, cols] = xn[:, cols]
                continue
            tau = float(tv) / self.steps
            lu = self._factor(gamma * tau)
            out[:, cols] = sdirk_steps(xn[:, cols], self.scheme, tau, self.steps,
                                       lambda u: L @ u,
                                       lambda r, lu=lu: lu.solve(r))
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=x.dtype)

    def _apply_A(self, y: torch.Tensor) -> torch.Tensor:
        """``M^-1 L y`` (strong operator) for ``y : (V, C)``."""
        r = torch.as_tensor(np.sqrt(self.mass), dtype=self.dtype, device=y.device)[:, None]
        return self._apply_B(r.to(y.dtype) * y) / r.to(y.dtype)  # M^-1/2 B M^1/2 y

    def kernel(self, j: int, t: float) -> np.ndarray:
        """Heat kernel ``k_t(., j)`` with respect to the area measure (THEORY.md 1.5).

        ``k_t(i, j) = [exp(-t A)]_{ij} / m_j``; for ``n != 0`` it is the transport-weighted
        kernel in the frame of ``i`` (from frame ``j``).

        Returns
        -------
        (V,) ndarray (real for n = 0, complex otherwise)
        """
        j = self.domain.check_index(j, "j") if hasattr(self.domain, "check_index") else int(j)
        e = np.zeros((self.n_vertices, 1), dtype=np.complex128 if self.n else np.float64)
        e[j, 0] = 1.0
        col = np.asarray(self(e, float(t)))[:, 0]
        return col / self.mass[j]


class _HeatFunction(torch.autograd.Function):
    """Autograd of a heat application whose forward runs outside the graph."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, solver: HeatKernel,
                method: str) -> torch.Tensor:
        with torch.no_grad():
            y = solver._raw(x, t, method)
        ctx.solver, ctx.method = solver, method
        ctx.save_for_backward(y, t)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        y, t = ctx.saved_tensors
        solver, method = ctx.solver, ctx.method
        gx = gt = None
        with torch.no_grad():
            if ctx.needs_input_grad[0]:
                m = solver._mass_t().to(g.device)[:, None].to(g.dtype)
                gx = m * solver._raw(g / m, t, method)
            if ctx.needs_input_grad[1]:
                Ay = solver._apply_A(y)
                if method == "implicit":  # backward Euler: d/dt R(tA/m)^m x = -(I + tau A)^-1 A y
                    Ay = solver._resolvent(Ay, t / solver.steps)
                gt = -column_real_dot(g, Ay).to(t.dtype)
        return gx, gt, None, None


def heat_diffuse(domain: Any, x: Any, t: Any, *, n: int = 0, method: Method = "auto",
                 **options: Any) -> Any:
    """One-shot heat application ``exp(-t (M^-1 L_n + kappa n^2)) x`` (see :class:`HeatKernel`).

    Parameters
    ----------
    domain : Surface or PointCloud
    x : (V,) or (V, C) Tensor or ndarray
    t : float or (C,) Tensor
    n : int
    method : {"auto", "spectral", "krylov", "chebyshev", "implicit"}
    **options
        Passed to :class:`HeatKernel` (``casimir``, ``k``, ``tol``, ``scheme``, ``steps``,
        ``device``, ``dtype``).

    Returns
    -------
    Same kind and shape as ``x``.
    """
    return HeatKernel(domain, n, method=method, **options)(x, t)
