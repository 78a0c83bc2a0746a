"""The eigensolver's Gram-Schmidt pass: fused numba kernels against torch's gemm.

One full pass projects a block ``W : (V, b)`` out of a basis ``Q : (V, n)``: ``C = Q^H W``,
then ``W -= Q C`` (:func:`manifoldmp.spectral.gramschmidt.project_out`). The eigensolver
makes about 63 of them per run of 128 pairs on a 100k-vertex mesh, with ``n`` between 176 and
296 and ``b`` = 8. Here both paths run in one process on the same arrays (real and complex,
Fortran-ordered as the solver keeps them): torch as the solver ran it before the kernels
(``(W^H Q)^H``, then ``addmm`` in place), and the kernels. Printed per shape: the time of
each product and of the pass, and the ratio ``torch / kernels``. The solver uses the kernels
from :data:`manifoldmp.spectral.gramschmidt.MIN_SIZE` entries of ``Q`` on: this benchmark is
what sets it.

Usage: ``python benchmarks/bench_gramschmidt.py [--repeat 10]`` (about a minute, of which
numba's compilation on first use is most when its cache is empty).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, machine

from manifoldmp.spectral import gramschmidt

SHAPES = ((2562, 16), (10242, 16), (10242, 64), (10242, 160), (40962, 160), (100_000, 232))


def _times(Q: np.ndarray, W: np.ndarray, repeat: int) -> list[float]:
    """Milliseconds: torch's coefficients and update, then the kernels' (best of ``repeat``)."""
    Qt, Wt = torch.from_numpy(Q), torch.from_numpy(W)
    C = np.ascontiguousarray(gramschmidt.coefficients(Q, W) * 1e-3)  # keeps W bounded
    Ct = torch.from_numpy(C)

    def torch_coef() -> None:
        (Wt.mH @ Qt).mH.resolve_conj()

    def torch_update() -> None:
        torch.addmm(Wt, Qt, Ct, alpha=-1, out=Wt)

    def kernel_coef() -> None:
        gramschmidt.coefficients(Q, W)

    def kernel_update() -> None:
        gramschmidt.subtract_product(Q, C, W)

    return [1e3 * best_time(f, repeat) for f in (torch_coef, torch_update, kernel_coef,
                                                  kernel_update)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--block", type=int, default=8, help="columns of W")
    args = ap.parse_args()
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.complex128):
        for V, n in SHAPES:
            Q = rng.standard_normal((V, n))
            W = rng.standard_normal((V, args.block))
            if dtype == np.complex128:
                Q = Q + 1j * rng.standard_normal(Q.shape)
                W = W + 1j * rng.standard_normal(W.shape)
            Q, W = np.asfortranarray(Q), np.asfortranarray(W)
            ref = Q.conj().T @ W
            err = float(np.abs(gramschmidt.coefficients(Q, W) - ref).max() / np.abs(ref).max())
            t = _times(Q, W, args.repeat)
            print(f"{np.dtype(dtype).name:10s} V={V:6d} n={n:3d} b={args.block}: torch "
                  f"{t[0]:7.3f} + {t[1]:7.3f} ms, kernels {t[2]:7.3f} + {t[3]:7.3f} ms -> "
                  f"{(t[0] + t[1]) / (t[2] + t[3]):.2f}x per pass (coefficients match numpy "
                  f"to {err:.1e}; used by the solver: "
                  f"{'yes' if V * n >= gramschmidt.MIN_SIZE else 'no'})", flush=True)


if __name__ == "__main__":
    main()
