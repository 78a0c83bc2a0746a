"""``GaugeNet``: a ready gauge-equivariant bundle-diffusion network (DiffusionNet's shape, typed).

Each block (THEORY.md 3.4): learned bundle diffusion per type and channel; type couplings of the
diffused features (gradient 0 -> 1, divergence and curl 1 -> 0); an optional higher-order
product basis (order 2 or 3, MACE-style) of the diffused features; a two-layer equivariant
per-vertex MLP (complex mixing within types, gated nonlinearity); a residual connection.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from manifoldmp.errors import ParameterError
from manifoldmp.nn.field_type import FieldType
from manifoldmp.nn.layers import (
    BundleDiffusion,
    Curl,
    Divergence,
    GatedNonlinearity,
    GaugeLinear,
    GaugeModule,
    Gradient,
    Parts,
    ProductBasis,
    _div_curl,
    check_ops,
    global_pool,
    invariants,
    to_faces,
)
from manifoldmp.operators.bundle import OperatorBundle

__all__ = ["GaugeBlock", "GaugeNet"]


def _concat(*dicts: Parts) -> Parts:
    out: dict[int, list[torch.Tensor]] = {}
    for d in dicts:
        for n, x in d.items():
            out.setdefault(n, []).append(x)
    return {n: torch.cat(v, dim=-1) if len(v) > 1 else v[0] for n, v in out.items()}


def _concat_type(*types: FieldType) -> FieldType:
    total: dict[int, int] = {}
    for ft in types:
        for m, n in ft:
            total[n] = total.get(n, 0) + m
    return FieldType(sorted(((m, n) for n, m in total.items()), key=lambda t: t[1]))


class GaugeBlock(GaugeModule):
    """One residual block of :class:`GaugeNet` (``in_type = out_type = hidden``)."""

    def __init__(self, hidden: Any, *, order: int = 2, method: str = "spectral",
                 steps: int = 1, casimir: bool | float = False) -> None:
        super().__init__()
        self.in_type = self.out_type = FieldType(hidden).simplify()
        C0 = self.in_type.multiplicity(0)
        C1 = self.in_type.multiplicity(1)
        self.diffusion = BundleDiffusion(self.in_type, method=method, steps=steps,
                                         casimir=casimir)
        pieces = [self.in_type, self.in_type]
        self.gradient = Gradient(C0) if C0 and self.in_type.max_type >= 1 else None
        if self.gradient is not None:
            pieces.append(self.gradient.out_type)
        self.div = Divergence(C1) if C1 else None
        self.curl = Curl(C1) if C1 else None
        if C1:
            pieces += [self.div.out_type, self.curl.out_type]
        self.products = None
        if order >= 2:
            prod_in = _concat_type(self.in_type, *([self.gradient.out_type]
                                                   if self.gradient is not None else []))
            # MACE's width rule: the product basis has as many channels as the hidden features
            self.products = ProductBasis(prod_in, self.in_type, order=order,
                                         channels=max(m for m, _ in self.in_type))
            pieces.append(self.in_type)
        cat = _concat_type(*pieces)
        self.nonlin = GatedNonlinearity(self.in_type)
        self.mix1 = GaugeLinear(cat, self.nonlin.in_type)
        self.mix2 = GaugeLinear(self.in_type, self.in_type)

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        d = self.diffusion.apply(parts, ops)
        feats = [parts, d]
        grad: Parts = {}
        if self.gradient is not None:
            grad = self.gradient.apply({0: d[0]}, ops)
            feats.append(grad)
        if self.div is not None:   # the two share one sparse product (Divergence, Curl)
            div, curl = _div_curl(ops, d[1])
            feats += [{0: div}, {0: curl}]
        if self.products is not None:
            feats.append(self.products.apply(_concat(d, grad), ops))
        h = self.mix1.apply(_concat(*feats))
        h = self.mix2.apply(self.nonlin.apply(h))
        return {n: parts[n] + h[n] for n in parts}


class GaugeNet(nn.Module):
    """Gauge-equivariant bundle-diffusion network.

    Parameters
    ----------
    in_type, out_type : FieldType or str
        Input and output feature types (``out_type`` type 0 only for ``outputs_at`` other than
        ``"vertices"``).
    width : int
        Real feature width of the hidden layers: ``C = width // (2 max_type + 1)`` channels of
        every type ``0..max_type`` (so the hidden dimension is about ``width``).
    blocks : int
        Residual blocks.
    max_type : int
        Largest hidden type.
    outputs_at : {"vertices", "faces", "global"}
        Vertex features of ``out_type``; or invariant features averaged over faces, or
        mass-weighted pooled over the domain, mapped by a final linear layer.
    order : int
        Correlation order of the product basis in every block (1: none; 2 or 3).
    method : {"spectral", "krylov", "chebyshev", "implicit", "explicit"}
        Diffusion method of every block.
    steps : int
        Steps of the implicit/explicit diffusion.
    casimir : bool or float
        Learnable (``True``) or fixed Casimir coefficient of the diffusions.

    Examples
    --------
    >>> import manifoldmp as mmp
    >>> S = mmp.meshes.icosphere(2)
    >>> ops = mmp.nn.precompute(S, max_type=2, k_eig=32)
    >>> net = mmp.nn.GaugeNet("3x0", "1x0+1x1", width=20, blocks=2).double()
    >>> net(torch.tensor(S.vertices), ops).shape
    torch.Size([162, 3])
    """

    def __init__(self, in_type: Any, out_type: Any, *, width: int = 128, blocks: int = 4,
                 max_type: int = 2, outputs_at: Literal["vertices", "faces", "global"] =
                 "vertices", order: int = 2, method: str = "spectral", steps: int = 1,
                 casimir: bool | float = False) -> None:
        super().__init__()
        self.in_type = FieldType(in_type)
        self.out_type = FieldType(out_type)
        if outputs_at not in ("vertices", "faces", "global"):
            raise ParameterError(f"outputs_at must be 'vertices', 'faces' or 'global', got "
                                 f"{outputs_at!r}")
        if outputs_at != "vertices" and self.out_type.types not in ((0,), ()):
            raise ParameterError(f"{outputs_at} outputs are invariant (type 0 only); got "
                                 f"out_type {self.out_type}")
        if not (isinstance(blocks, int) and blocks >= 1):
            raise ParameterError(f"blocks must be a positive integer, got {blocks!r}")
        C = width // (2 * max_type + 1)
        if C < 1:
            raise ParameterError(f"width {width} is too small for max_type {max_type}: need >= "
                                 f"{2 * max_type + 1}")
        self.hidden = FieldType([(C, n) for n in range(max_type + 1)])
        self.outputs_at, self.max_type = outputs_at, max_type
        self.encoder = GaugeLinear(self.in_type, self.hidden)
        self.blocks = nn.ModuleList(GaugeBlock(self.hidden, order=order, method=method,
                                               steps=steps, casimir=casimir)
                                    for _ in range(blocks))
        if outputs_at == "vertices":
            self.decoder: nn.Module = GaugeLinear(self.hidden, self.out_type.simplify())
        else:
            self.decoder = nn.Linear(C * (max_type + 1), self.out_type.dim)

    def forward(self, x: torch.Tensor, ops: OperatorBundle) -> torch.Tensor:
        """``(V, in_type.dim) -> (V, out_type.dim)`` (``(F, dim)`` or ``(dim,)`` otherwise)."""
        self.in_type.check(x)
        check_ops(ops, x, self.max_type)
        h = self.encoder.apply(self.in_type.split(x))
        for block in self.blocks:
            h = block.apply(h, ops)
        if self.outputs_at == "vertices":
            return self.out_type.merge(self.decoder.apply(h))
        inv = invariants(h)
        pooled = global_pool(inv, ops) if self.outputs_at == "global" else to_faces(inv, ops)
        return self.decoder(pooled)

