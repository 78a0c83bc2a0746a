"""GaugeNet against a DiffusionNet-architecture model of the same width: forward + backward.

The comparison model is written here from the DiffusionNet paper's description (Sharp et al.,
"DiffusionNet: Discretization Agnostic Learning on Surfaces", 2022, section 3): per block, a
learned-time spectral diffusion of every channel, spatial gradient features
``tanh(Re(conj(g) * (A g)))`` of the diffused channels (``g`` the tangent gradient, ``A`` a
learned complex-linear map), and a two-layer per-vertex MLP on ``[x, diffused, gradient
features]`` with a residual connection; a linear layer in and out. Both models use the same
``k`` eigenpairs (type 0 for the comparison model; types 0, 1, 2 for GaugeNet) and the same
gradient operator; precomputation is not timed.

Usage: ``python benchmarks/bench_nn.py [--levels 5] [--width 128] [--blocks 4] [--k 128]
[--repeats 5] [--dtype float32]``. ``--levels 5`` is ``icosphere(5)`` (10,242 vertices);
``--torus`` adds the 100k-vertex torus of ``bench_heat.py`` (eigenpairs of three types take a
few minutes there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

import manifoldmp as mmp
from manifoldmp import nn as mnn
from manifoldmp.nn.functional import sparse_product


class DiffusionNetBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.zeros(width))
        self.A_re = nn.Linear(width, width, bias=False)
        self.A_im = nn.Linear(width, width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(3 * width, width), nn.ReLU(),
                                 nn.Linear(width, width))

    def forward(self, x: torch.Tensor, ops: mnn.OperatorBundle) -> torch.Tensor:
        lam, phi = ops.evals[0], ops.evecs[0]
        coef = phi.T @ (ops.mass[:, None] * x)
        t = self.t.clamp_min(1e-8)
        d = phi @ (torch.exp(-lam[:, None] * t[None, :]) * coef)
        # the same sparse product as GaugeNet's layers (cached adjoint in the backward), so
        # the comparison measures the architectures, not torch's CSR autograd
        g = sparse_product(ops.gradient, d.to(ops.gradient.dtype), ops.gradient_adjoint())
        gx, gy = g.real, g.imag
        ax = self.A_re(gx) - self.A_im(gy)
        ay = self.A_re(gy) + self.A_im(gx)
        feat = torch.tanh(gx * ax + gy * ay)
        return x + self.mlp(torch.cat([x, d, feat], dim=-1))


class DiffusionNetLike(nn.Module):
    def __init__(self, c_in: int, c_out: int, width: int, blocks: int) -> None:
        super().__init__()
        self.first = nn.Linear(c_in, width)
        self.blocks = nn.ModuleList(DiffusionNetBlock(width) for _ in range(blocks))
        self.last = nn.Linear(width, c_out)

    def forward(self, x: torch.Tensor, ops: mnn.OperatorBundle) -> torch.Tensor:
        h = self.first(x)
        for b in self.blocks:
            h = b(h, ops)
        return self.last(h)


def time_fwd_bwd(models: list[nn.Module], x: torch.Tensor, ops: mnn.OperatorBundle,
                 repeats: int) -> list[list[float]]:
    """Forward + backward times of every model, the models alternating within each repeat
    (so that a slow phase of the machine hits all of them); one warm-up run each."""
    times: list[list[float]] = [[] for _ in models]
    for r in range(repeats + 1):
        for i, model in enumerate(models):
            t0 = time.perf_counter()
            model.zero_grad()
            model(x, ops).square().mean().backward()
            if r:
                times[i].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, nargs="*", default=[5])
    ap.add_argument("--torus", action="store_true")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    out: dict = {"machine": machine(), "threads": torch.get_num_threads(), "runs": []}
    print(f"machine: {out['machine']}, torch threads {out['threads']}, {args.dtype}")
    domains = [(f"icosphere({lv})", mmp.meshes.icosphere(lv)) for lv in args.levels]
    if args.torus:
        domains.append(("torus(400, 250)", mmp.meshes.torus(n_major=400, n_minor=250)))
    for name, S in domains:
        t0 = time.perf_counter()
        ops = mnn.precompute(S, max_type=2, k_eig=args.k).to(dtype=dtype)
        pre = time.perf_counter() - t0
        x = torch.tensor(S.vertices, dtype=dtype)
        torch.manual_seed(0)
        ours = mnn.GaugeNet("3x0", "8x0", width=args.width, blocks=args.blocks).to(dtype)
        ref = DiffusionNetLike(3, 8, args.width, args.blocks).to(dtype)
        times = time_fwd_bwd([ours, ref], x, ops, args.repeats)
        t_ours, t_ref = (min(t) for t in times)
        med_ours, med_ref = (statistics.median(t) for t in times)
        row = {"mesh": name, "V": S.n_vertices, "precompute_s": pre, "gaugenet_s": t_ours,
               "diffusionnet_s": t_ref, "ratio": t_ours / t_ref,
               "gaugenet_median_s": med_ours, "diffusionnet_median_s": med_ref,
               "median_ratio": med_ours / med_ref,
               "gaugenet_hidden": str(ours.hidden),
               "gaugenet_params": sum(p.numel() for p in ours.parameters()),
               "diffusionnet_params": sum(p.numel() for p in ref.parameters())}
        out["runs"].append(row)
        print(f"{name}: V = {S.n_vertices}, precompute {pre:.1f} s; forward+backward GaugeNet "
              f"({ours.hidden}) {t_ours:.3f} s, DiffusionNet-like (width {args.width}) "
              f"{t_ref:.3f} s -> GaugeNet / DiffusionNet = {t_ours / t_ref:.2f} (best of "
              f"{args.repeats}; medians {med_ours:.3f} / {med_ref:.3f} s = "
              f"{med_ours / med_ref:.2f})")
    print("wrote", write_json("nn", out))


if __name__ == "__main__":
    main()
