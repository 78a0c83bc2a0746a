"""Implicit (rational) time stepping of the heat flow with one reused sparse factorization.

The schemes are singly diagonally implicit Runge-Kutta methods (SDIRK): every stage solves with
the same matrix ``M + gamma tau L``, so one factorization serves all stages and all steps of a
given step size ``tau = t / steps`` (THEORY.md 3.2). All three are L-stable (the amplification of
stiff modes tends to zero), so they are unconditionally stable and monotone in energy.

======== ===== ============================================ ===========================
scheme   order gamma                                        stages (solves per step)
======== ===== ============================================ ===========================
euler    1     1                                            1 (backward Euler)
sdirk2   2     1 - 1/sqrt(2)                                2 (Alexander 1977)
sdirk3   3     0.43586652150845899 (root of x^3-3x^2+3x/2-1/6) 3 (Alexander 1977)
======== ===== ============================================ ===========================

Error statement: the heat operator and every scheme are functions of the same ``M``-self-adjoint
operator ``A = M^-1 L``, so in the ``M``-norm

``||u_scheme(t) - exp(-t A) x||_M <= max_{lambda in [0, Lambda]} |R(tau lambda)^m - exp(-t lambda)|
* ||x||_M``

with ``R`` the scheme's stability function, ``m`` the number of steps and ``Lambda`` a Gershgorin
bound of the spectrum of ``A`` (valid where ``L`` is positive semidefinite).
:func:`error_bound` evaluates this maximum.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from manifoldmp.errors import ParameterError
from manifoldmp.spectral.eigen import _factorize, check_permutation

__all__ = ["SCHEMES", "error_bound", "factorize_in_parallel", "factorize_shifted", "sdirk_steps",
           "stability_function"]

_G3 = 0.43586652150845899
SCHEMES: dict[str, tuple[float, np.ndarray, np.ndarray, int]] = {
    # name: (gamma, A (lower triangular, diagonal gamma), b, order)
    "euler": (1.0, np.array([[1.0]]), np.array([1.0]), 1),
    "sdirk2": (1 - 1 / math.sqrt(2),
               np.array([[1 - 1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 1 - 1 / math.sqrt(2)]]),
               np.array([1 / math.sqrt(2), 1 - 1 / math.sqrt(2)]), 2),
    "sdirk3": (_G3,
               np.array([[_G3, 0.0, 0.0],
                         [(1 - _G3) / 2, _G3, 0.0],
                         [-1.5 * _G3**2 + 4 * _G3 - 0.25, 1.5 * _G3**2 - 5 * _G3 + 1.25, _G3]]),
               np.array([-1.5 * _G3**2 + 4 * _G3 - 0.25, 1.5 * _G3**2 - 5 * _G3 + 1.25, _G3]), 3),
}


def sdirk_steps(x: np.ndarray, scheme: str, tau: float, steps: int,
                apply_L: Callable[[np.ndarray], np.ndarray],
                solve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Advance ``M du/dt = -L u`` by ``steps`` SDIRK steps of size ``tau``.

    Parameters
    ----------
    x : (V, C) ndarray
        Initial values.
    scheme : {"euler", "sdirk2", "sdirk3"}
    tau : float
    steps : int
    apply_L : callable
        ``u -> L u``.
    solve : callable
        ``r -> (M + gamma tau L)^-1 r``.

    Returns
    -------
    (V, C) ndarray
    """
    _, A, b, _ = SCHEMES[scheme]
    u = x
    s = len(b)
    for _ in range(steps):
        ks: list[np.ndarray] = []
        for i in range(s):
            arg = u
            for j in range(i):
                arg = arg + (tau * A[i, j]) * ks[j]
            ks.append(-solve(apply_L(arg)))
        if scheme == "euler":
            u = u + tau * ks[0]
        else:
            for i in range(s):
                u = u + (tau * b[i]) * ks[i]
    return u


def stability_function(z: np.ndarray, scheme: str) -> np.ndarray:
    """``R(z)``: one step of ``scheme`` applied to ``u' = -lambda u`` with ``z = tau lambda``."""
    z = np.asarray(z, dtype=np.float64)
    gamma = SCHEMES[scheme][0]
    out = sdirk_steps(np.ones_like(z), scheme, 1.0, 1, lambda u: z * u,
                      lambda r: r / (1.0 + gamma * z))
    return np.asarray(out)


def error_bound(t: float, steps: int, scheme: str, lam_max: float) -> float:
    """``max_{0 <= lambda <= lam_max} |R(t lambda / steps)^steps - exp(-t lambda)|``.

    Evaluated on a dense logarithmic grid (plus the end points); the function is smooth, so the
    grid maximum is the maximum to about three digits.
    """
    if t <= 0:
        return 0.0
    lam = np.concatenate([[0.0], np.geomspace(1e-6 / t, max(lam_max, 2e-6 / t), 4000)])
    lam = lam[lam <= max(lam_max, 0.0)]
    z = t * lam / steps
    R = stability_function(z, scheme)
    return float(np.max(np.abs(R**steps - np.exp(-t * lam))))


def factorize_shifted(L: sp.spmatrix, mass: np.ndarray, coef: float, *,
                      perm: np.ndarray | None = None) -> Any:
    """Sparse LU of ``M + coef L`` (Hermitian; symmetric mode, nested-dissection ordering).

    Parameters
    ----------
    L : (V, V) sparse matrix
    mass : (V,) ndarray
    coef : float
    perm : (V,) int ndarray, optional
        A fill-reducing ordering of ``L``'s pattern to reuse (from
        :func:`~manifoldmp.spectral.eigen.fill_reducing_ordering`; at 200k vertices it costs
        1.4 s, more than the factorization). Default: computed.

    Raises
    ------
    ParameterError
        ``perm`` is not a permutation of ``0..V-1``.

    Returns
    -------
    SparseFactor
        :class:`~manifoldmp.spectral.eigen.SparseFactor` (``.solve(b)`` for ``b : (V,)`` or
        ``(V, C)``).
    """
    K = (sp.diags(mass) + coef * L).tocsc()
    return _factorize(K, None if perm is None else check_permutation(perm, K.shape[0]))


def factorize_in_parallel(jobs: dict[Hashable, Callable[[], Any]]) -> dict[Hashable, Any]:
    """Run factorization jobs two at a time; ``{key: job()}``.

    SuperLU releases the GIL while it factors (its solves do not), so two factorizations on
    two threads take about the time of one (100k-vertex torus: 1.81 s one after the other,
    1.03 s together). Build the operands and any shared ordering before, in the calling
    thread; a job should only factor. One job, or one CPU, runs in the calling thread.
    Exceptions of a job are raised here.

    Raises
    ------
    ParameterError
        ``jobs`` is not a dict of callables.
    """
    if not isinstance(jobs, dict):
        raise ParameterError(f"jobs must be a dict of callables, got {type(jobs).__name__}")
    bad = [key for key, job in jobs.items() if not callable(job)]
    if bad:
        raise ParameterError(f"jobs must be callables; not callable: {bad[:3]!r}")
    if len(jobs) < 2 or (os.cpu_count() or 1) < 2:
        return {key: job() for key, job in jobs.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}
