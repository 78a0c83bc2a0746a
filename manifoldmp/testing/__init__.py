"""Library-owned test harness for gauge-equivariant modules (THEORY.md 3.5 protocol).

:func:`assert_gauge_equivariant` draws a random gauge ``alpha`` (one angle per vertex),
re-precomputes the geometry of ``domain.regauge(alpha)`` (so every operator, eigenbasis and edge
angle is rebuilt, not transformed by hand), transforms the input features in float64, runs the
module on both and compares ``module(x', ops')`` with ``out_type.transform(module(x, ops))``.
Tolerances are keyed by dtype (:data:`TOL`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from manifoldmp.errors import ParameterError
from manifoldmp.nn.field_type import FieldType
from manifoldmp.operators.bundle import OperatorBundle, precompute

__all__ = ["TOL", "assert_gauge_equivariant", "gauge_equivariance_error"]

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _out_type(module: Any, out: torch.Tensor) -> FieldType:
    ft = getattr(module, "out_type", None)
    if ft is None:
        raise ParameterError("the module must declare out_type (a FieldType)")
    return FieldType(ft)


def gauge_equivariance_error(module: Any, domain: Any, *, dtype: torch.dtype = torch.float64,
                             x: torch.Tensor | None = None, seed: int = 0,
                             ops: OperatorBundle | None = None, **precompute_kwargs: Any
                             ) -> float:
    """Relative error ``max|f(x', ops') - g f(x, ops)| / max|f(x, ops)|`` under a random gauge.

    Parameters
    ----------
    module : torch.nn.Module
        With ``in_type`` / ``out_type`` and ``forward(x, ops)``; it is cast to ``dtype``.
    domain : Surface or PointCloud
    dtype : torch.float32 or torch.float64
    x : (V, in_type.dim) Tensor, optional
        Input (default: standard normal, seeded).
    seed : int
        Seed of the gauge and of the default input.
    ops : OperatorBundle, optional
        Bundle of ``domain`` if already built (the regauged one is always rebuilt).
    **precompute_kwargs
        Passed to :func:`~manifoldmp.nn.precompute` (``max_type`` defaults to the largest type
        of the module's field types).

    Returns
    -------
    float
    """
    in_type = FieldType(module.in_type)
    max_t = max(in_type.max_type, FieldType(module.out_type).max_type,
                getattr(module, "max_type", 0))
    kwargs = {"max_type": max_t, **precompute_kwargs}
    gen = torch.Generator().manual_seed(seed)
    V = domain.n_vertices
    alpha = torch.rand(V, generator=gen, dtype=torch.float64) * (2 * np.pi)
    if x is None:
        x = in_type.random(V, generator=gen, dtype=torch.float64)
    x64 = x.to(torch.float64)
    x_g = in_type.transform(x64, alpha)
    ops = ops if ops is not None else precompute(domain, **kwargs)
    ops_g = precompute(domain.regauge(alpha.numpy()), **kwargs)
    module = module.to(dtype)
    with torch.no_grad():
        out = module(x64.to(dtype), ops.to(dtype=dtype)).to(torch.float64)
        out_g = module(x_g.to(dtype), ops_g.to(dtype=dtype)).to(torch.float64)
    if out.dim() == 2 and getattr(module, "outputs_at", "vertices") == "vertices":
        expected = _out_type(module, out).transform(out, alpha)
    else:   # face and global outputs are invariant
        expected = out
    scale = float(out.abs().max())
    if scale == 0.0:
        raise ParameterError("the module's output is identically zero: the test would be "
                             "vacuous (use nonzero parameters and inputs)")
    if not bool(torch.isfinite(out).all()):
        raise ParameterError("the module's output is not finite")
    return float((out_g - expected).abs().max()) / scale


def assert_gauge_equivariant(module: Any, domain: Any, *, dtype: torch.dtype = torch.float64,
                             atol: float | None = None, **kwargs: Any) -> float:
    """Raise ``AssertionError`` unless :func:`gauge_equivariance_error` is within tolerance.

    The default tolerance is :data:`TOL` of ``dtype`` (1e-10 in float64, 1e-4 in float32).
    Returns the measured error.
    """
    err = gauge_equivariance_error(module, domain, dtype=dtype, **kwargs)
    tol = TOL[dtype] if atol is None else atol
    if not err <= tol:
        raise AssertionError(
            f"{type(module).__name__} is not gauge-equivariant in {dtype}: relative error "
            f"{err:.3e} > {tol:.1e}")
    return err
