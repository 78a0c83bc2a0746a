"""The layers' Chebyshev or Lanczos heat flow on the CPU: fused kernels against torch's product.

``manifoldmp.nn.heat_flow(..., method="chebyshev")`` runs the Chebyshev recurrence either
through torch's CSR product (MKL) plus an accumulation per degree, or through the fused numba
kernels of :mod:`manifoldmp.spectral.fused` (two degrees per pass over memory);
``method="krylov"`` (``--method krylov``) runs the Lanczos method either through torch's
product, column reductions and block updates, or through the fused Lanczos kernels (two passes
over memory per step, the basis regenerated two steps per pass). Both run here
in one process, on the same bundle, input and times, for types 0 and 1 in float32 and float64
and for 4 to 64 channels; the ratio ``torch / fused`` is printed per width, with the bytes per
row of the input (complex channels count twice). The layers pick the fused path from
:data:`manifoldmp.spectral.fused.MIN_INPUT_ROW_BYTES` (and ``MIN_COMPLEX_INPUT_ROW_BYTES``) on:
this benchmark is what sets them.

The times per channel are ``h^2 exp(U(0, log c))`` (``h`` the mean edge length, ``c`` =
``--spread``), the range a diffusion layer's learned times cover, at the layers' default
tolerance (``1e-10`` in float64, ``1e-6`` in float32).

Usage: ``python benchmarks/bench_fused.py [--meshes FILE ...] [--icosphere 5] [--spread 50]
[--repeat 3] [--method chebyshev|krylov]``. Without ``--meshes`` the bundled
``icosphere(--icosphere)`` is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, machine

import manifoldmp as mmp
from manifoldmp import nn as mnn
from manifoldmp.nn import functional as F
from manifoldmp.spectral import fused as fused_mod

WIDTHS = (4, 8, 16, 32, 64)


def run(name: str, surface: mmp.Surface, spread: float, repeat: int,
        method: str = "chebyshev") -> None:
    ops64 = mnn.precompute(surface, max_type=1, k_eig=0)
    h = ops64.mean_edge_length
    print(f"\n{name}: V = {surface.n_vertices}, h = {h:.3g}, times h^2 [1, {spread:g}]")
    head = "degree" if method == "chebyshev" else " steps"
    print(f"dtype    type  {head}  " + "  ".join(f"C={c:<3d}" for c in WIDTHS))
    for real in (torch.float32, torch.float64):
        ops = ops64.to(dtype=real)
        for n in (0, 1):
            dtype = real if n == 0 else (torch.complex64 if real == torch.float32
                                         else torch.complex128)
            cells = []
            for C in WIDTHS:
                g = torch.Generator().manual_seed(C)
                x = torch.randn(surface.n_vertices, C, dtype=dtype, generator=g)
                rng = np.random.default_rng(C)
                t = torch.from_numpy(h * h * np.exp(rng.uniform(0, np.log(spread), C))).to(real)

                def flow(x: torch.Tensor = x, t: torch.Tensor = t, n: int = n,
                         ops: mnn.OperatorBundle = ops) -> None:
                    mnn.heat_flow(ops, n, x, t, method=method)

                F.FUSED = False
                slow = best_time(flow, repeat=repeat)
                F.FUSED = True
                op = F._fused_operator(ops, n, x)   # what the layers pick at this width
                keep = fused_mod.MIN_INPUT_ROW_BYTES, fused_mod.MIN_COMPLEX_INPUT_ROW_BYTES
                fused_mod.MIN_INPUT_ROW_BYTES = fused_mod.MIN_COMPLEX_INPUT_ROW_BYTES = 0
                try:
                    fast = best_time(flow, repeat=repeat)
                finally:
                    fused_mod.MIN_INPUT_ROW_BYTES, fused_mod.MIN_COMPLEX_INPUT_ROW_BYTES = keep
                rb = C * x.element_size()
                mark = "*" if op is not None else " "
                cells.append(f"{slow / fast:4.2f}{mark}({rb}B)")
            degree = _degree(ops, n, x, t, method)
            print(f"{str(real)[6:]:8s} {n:4d}  {degree:6d}  " + "  ".join(cells))


def _degree(ops: mnn.OperatorBundle, n: int, x: torch.Tensor, t: torch.Tensor,
            method: str) -> int:
    """Chebyshev degree or Lanczos steps of the last width's flow (the layers' tolerance)."""
    from manifoldmp.spectral.chebyshev import heat_chebyshev
    from manifoldmp.spectral.krylov import heat_lanczos

    tol = 1e-10 if x.dtype in (torch.float64, torch.complex128) else 1e-6
    if method == "krylov":
        _, kinfo = heat_lanczos(ops.symmetric_laplacian(n, x.dtype), ops.mass.sqrt(), x, t,
                                tol=tol)
        return int(kinfo.steps)
    _, info = heat_chebyshev(ops.shifted_laplacian(n, x.dtype), ops.spectral_bound(n),
                             ops.mass.sqrt(), x, t, tol=tol)
    return int(info.degree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meshes", nargs="*", default=[])
    ap.add_argument("--icosphere", type=int, default=5)
    ap.add_argument("--spread", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--method", choices=["chebyshev", "krylov"], default="chebyshev")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.method}: ratio = torch's product / fused kernels (>1: fused faster); "
          "* = the layers pick fused")
    if args.meshes:
        for path in args.meshes:
            run(Path(path).name, mmp.Surface.load(path), args.spread, args.repeat, args.method)
    else:
        run(f"icosphere({args.icosphere})", mmp.meshes.icosphere(args.icosphere), args.spread,
            args.repeat, args.method)


if __name__ == "__main__":
    main()
