"""Gauge-equivariant layers: the time-discretized bundle heat flow and what couples its types.

Every layer is a :class:`GaugeModule`: it declares ``in_type`` and ``out_type``
(:class:`~manifoldmp.nn.FieldType`) and maps real features ``x : (V, in_type.dim)`` with an
:class:`~manifoldmp.operators.bundle.OperatorBundle` to ``(V, out_type.dim)``. Internally the
features are split by type into complex ``(V, C_n)`` tensors (:meth:`FieldType.split`); layers
that are chained inside a network pass these dictionaries directly (:meth:`GaugeModule.apply`).

Why each layer is equivariant (THEORY.md 3.5): functions of ``M^-1 L_n`` commute with the
diagonal gauge ``D_n``; channel mixing by complex weights commutes with phases; products of types
add phases (selection rules, THEORY.md 4.2); gates and norms are invariant scalars.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from manifoldmp.errors import ParameterError
from manifoldmp.nn.field_type import FieldType
from manifoldmp.nn.functional import HEAT_METHODS, heat_flow, sparse_product
from manifoldmp.operators.bundle import OperatorBundle
from manifoldmp.operators.sparse import complex_dtype

__all__ = [
    "AnisotropicConv",
    "BundleDiffusion",
    "Curl",
    "Divergence",
    "GatedNonlinearity",
    "GaugeLinear",
    "GaugeModule",
    "Gradient",
    "NormNonlinearity",
    "ProductBasis",
    "RegularNonlinearity",
    "TypeProduct",
    "global_pool",
    "invariants",
    "to_faces",
]

Parts = dict[int, torch.Tensor]



def _cweight(p: torch.Tensor) -> torch.Tensor:
    """Complex view of a real ``(..., 2)`` parameter (keeps ``module.double()`` working)."""
    return torch.view_as_complex(p)


def _init_complex(rows: int, cols: int, scale: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(rows, cols, 2) * (scale / math.sqrt(2.0)))


def check_ops(ops: Any, x: torch.Tensor, max_type: int) -> OperatorBundle:
    """Validate the bundle against features ``x`` (same vertex count, dtype and device)."""
    if not isinstance(ops, OperatorBundle):
        raise ParameterError(f"ops must be an OperatorBundle (manifoldmp.nn.precompute), got "
                             f"{type(ops).__name__}")
    if x.shape[0] != ops.n_vertices:
        raise ParameterError(f"features have {x.shape[0]} rows, the bundle has "
                             f"{ops.n_vertices} vertices")
    real = x.real.dtype if x.is_complex() else x.dtype
    if real != ops.dtype:
        raise ParameterError(f"features are {real} but the bundle is {ops.dtype}; use "
                             f"ops.to(dtype={real})")
    if x.device != ops.device:
        raise ParameterError(f"features are on {x.device} but the bundle is on {ops.device}; "
                             f"use ops.to(device=...)")
    ops.check_type(max_type)
    return ops


class GaugeModule(nn.Module):
    """Base class: a layer with ``in_type`` / ``out_type`` acting on typed features.

    Subclasses implement :meth:`apply` on type dictionaries; :meth:`forward` wraps it with the
    flat ``(V, dim)`` layout and argument checks.
    """

    in_type: FieldType
    out_type: FieldType

    def forward(self, x: torch.Tensor, ops: OperatorBundle) -> torch.Tensor:
        """Map ``x : (V, in_type.dim)`` to ``(V, out_type.dim)``."""
        self.in_type.check(x)
        if x.dim() != 2:
            raise ParameterError(f"x must have shape (V, {self.in_type.dim}), got "
                                 f"{tuple(x.shape)}")
        check_ops(ops, x, max(self.in_type.max_type, self.out_type.max_type))
        return self.out_type.merge(self.apply(self.in_type.split(x), ops))

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:  # pragma: no cover
        """Map ``{n: (V, C_n)}`` features (complex for ``n >= 1``) to the output types."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Types (and options) shown by ``repr``."""
        return f"in_type={self.in_type}, out_type={self.out_type}"


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class BundleDiffusion(GaugeModule):
    """Learned heat flow per type and per channel (THEORY.md 3.4 step 1).

    ``out^{(n)}_c = exp(-t^{(n)}_c (M^-1 L_n + kappa_n n^2)) x^{(n)}_c`` with learnable
    ``t = softplus(.) >= 0`` (absolute time units, so a trained layer transfers across
    resolutions for the exact and implicit methods) and optionally a learnable Casimir
    coefficient ``kappa_n = softplus(.) >= 0`` per type. With ``time_unit="area"`` (default)
    the flow time is ``t`` times the total area of the domain, so the layer does the same thing
    on a scaled copy of a shape (DiffusionNet gets this by normalizing the shapes instead).

    Parameters
    ----------
    field_type : FieldType or str
        ``in_type = out_type``.
    method : {"spectral", "krylov", "chebyshev", "implicit", "explicit"}
        Exact truncated-spectral or Krylov semigroup, backward Euler, or forward Euler (one
        round of transported messages per step).
    steps : int
        Steps of the implicit / explicit schemes.
    casimir : bool or float
        ``True``: learnable ``kappa`` per type (initialized at 0.5); a float: fixed ``kappa``.
    init_time : (float, float)
        Initial times are log-uniform in this range.
    time_unit : {"area", "absolute"}
        Unit of the learned times: the domain's total area or absolute.
    tol : float, optional
        Tolerance of Krylov / CG.
    """

    def __init__(self, field_type: Any, *, method: str = "spectral", steps: int = 1,
                 casimir: bool | float = False, init_time: tuple[float, float] = (1e-3, 1e-1),
                 tol: float | None = None, time_unit: str = "area") -> None:
        super().__init__()
        if time_unit not in ("area", "absolute"):
            raise ParameterError(f"time_unit must be 'area' or 'absolute', got {time_unit!r}")
        self.time_unit = time_unit
        if method not in HEAT_METHODS:
            raise ParameterError(f"method must be one of {HEAT_METHODS}, got {method!r}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ParameterError(f"steps must be a positive integer, got {steps!r}")
        lo, hi = init_time
        if not 0 < lo <= hi:
            raise ParameterError(f"init_time must satisfy 0 < low <= high, got {init_time}")
        self.in_type = self.out_type = FieldType(field_type).simplify()
        self.method, self.steps, self.tol = method, steps, tol
        self.raw_time = nn.ParameterDict()
        for m, n in self.in_type:
            t0 = torch.exp(torch.empty(m).uniform_(math.log(lo), math.log(hi)))
            self.raw_time[str(n)] = nn.Parameter(_inv_softplus(t0))
        self.learn_casimir = casimir is True
        if self.learn_casimir:
            self.raw_casimir = nn.Parameter(
                _inv_softplus(torch.full((self.in_type.max_type + 1,), 0.5)))
        else:
            kap = float(casimir)
            if kap < 0 or not math.isfinite(kap):
                raise ParameterError(f"casimir must be >= 0, got {casimir}")
            self.register_buffer("fixed_casimir", torch.tensor(kap))

    def times(self, n: int) -> torch.Tensor:
        """``(C_n,)`` current diffusion times of type ``n``."""
        return nn.functional.softplus(self.raw_time[str(n)])

    def casimir(self, n: int) -> torch.Tensor:
        """Current ``kappa`` of type ``n``."""
        if self.learn_casimir:
            return nn.functional.softplus(self.raw_casimir[n])
        return self.fixed_casimir

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        out = {}
        unit = ops.total_area if self.time_unit == "area" else 1.0
        for n, x in parts.items():
            t = self.times(n).to(ops.dtype) * unit
            out[n] = heat_flow(ops, n, x, t, method=self.method, casimir=self.casimir(n),
                               steps=self.steps, tol=self.tol)
        return out

    def extra_repr(self) -> str:
        """Types (and options) shown by ``repr``."""
        return f"{self.in_type}, method={self.method!r}, steps={self.steps}"


class GaugeLinear(GaugeModule):
    """Equivariant pointwise linear map: complex channel mixing within each type.

    ``out^{(n)} = x^{(n)} W^{(n)}`` with complex ``W^{(n)}`` (real for ``n = 0``, plus a bias
    there only). In the real layout every channel block is ``a I + b J`` (complex
    multiplication); no map between different types (Schur). Output types absent from the
    input are zero.
    """

    def __init__(self, in_type: Any, out_type: Any, *, bias: bool = True) -> None:
        super().__init__()
        self.in_type = FieldType(in_type).simplify()
        self.out_type = FieldType(out_type).simplify()
        self.weights = nn.ParameterDict()
        for m_out, n in self.out_type:
            m_in = self.in_type.multiplicity(n)
            if m_in == 0:
                continue
            if n == 0:
                self.weights["0"] = nn.Parameter(torch.randn(m_in, m_out) / math.sqrt(m_in))
            else:
                self.weights[str(n)] = _init_complex(m_in, m_out, 1 / math.sqrt(m_in))
        self.bias = nn.Parameter(torch.zeros(self.out_type.multiplicity(0))) \
            if bias and self.out_type.multiplicity(0) else None

    def apply(self, parts: Parts, ops: OperatorBundle | None = None) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        V = next(iter(parts.values())).shape[0]
        ref = next(iter(parts.values()))
        real = ref.real.dtype if ref.is_complex() else ref.dtype
        out = {}
        for m_out, n in self.out_type:
            if str(n) in self.weights:
                W = self.weights[str(n)]
                out[n] = parts[n] @ (W if n == 0 else _cweight(W)).to(parts[n].dtype)
            else:
                out[n] = torch.zeros(V, m_out, dtype=real if n == 0 else complex_dtype(real),
                                     device=ref.device)
            if n == 0 and self.bias is not None:
                out[n] = out[n] + self.bias.to(out[n].dtype)
        return out


class Gradient(GaugeModule):
    """Tangent gradient of each scalar channel: ``Cx0 -> Cx1`` (``G'= D_1 G`` under a gauge)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_type, self.out_type = FieldType([(channels, 0)]), FieldType([(channels, 1)])

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        x = parts[0]
        return {1: sparse_product(ops.gradient, x.to(complex_dtype(x.dtype)),
                                  ops.gradient_adjoint())}


def _codifferential(ops: OperatorBundle, X: torch.Tensor) -> torch.Tensor:
    """``Y = -M^-1 G^H M X``: divergence ``Re Y`` and curl ``Im Y`` from one sparse product.

    ``curl X = -div(1j X) = Re(1j M^-1 G^H M X) = Im Y``.
    """
    m = ops.mass[:, None]
    return sparse_product(ops.gradient_adjoint(), m.to(X.dtype) * X, ops.gradient) / (-m)


def _divergence(ops: OperatorBundle, X: torch.Tensor) -> torch.Tensor:
    return _codifferential(ops, X).real


def _div_curl(ops: OperatorBundle, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divergence and curl of every vector channel ``X : (V, C)`` from one sparse product."""
    Y = _codifferential(ops, X)
    return Y.real, Y.imag


class Divergence(GaugeModule):
    """Divergence ``-M^-1 Re(G^H M X)`` of each vector channel: ``Cx1 -> Cx0``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_type, self.out_type = FieldType([(channels, 1)]), FieldType([(channels, 0)])

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        return {0: _divergence(ops, parts[1])}


class Curl(GaugeModule):
    """Curl ``-div(J X)`` (``J``: rotation by +90 degrees) of every vector channel: Cx1 -> Cx0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_type, self.out_type = FieldType([(channels, 1)]), FieldType([(channels, 0)])

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        return {0: _div_curl(ops, parts[1])[1]}


# ---------------------------------------------------------------------- products
def _signed(parts: Parts, s: int) -> torch.Tensor:
    """Type-``s`` view of the features: ``conj(x^{(|s|)})`` for negative ``s``."""
    x = parts[abs(s)]
    if s < 0:
        return x.conj()
    return x if x.is_complex() else x.to(complex_dtype(x.dtype))


class TypeProduct(GaugeModule):
    """Bilinear coupling of types by the SO(2) selection rules (THEORY.md 3.4 step 3).

    For every pair ``(m, n)`` of input types and every output type ``p`` with ``p = m + n`` or
    ``p = |n - m|``: ``out^{(p)} += ((x^{(m)} A) * (x^{(n)} B)) W`` (``conj`` on the first factor
    for the difference rule), channel-wise products of ``hidden`` complex mixtures. Type-0
    outputs keep the real part of a complex-weighted sum (real and imaginary parts are both
    invariant).
    """

    def __init__(self, in_type: Any, out_type: Any, *, hidden: int | None = None) -> None:
        super().__init__()
        self.in_type = FieldType(in_type).simplify()
        self.out_type = FieldType(out_type).simplify()
        types = self.in_type.types
        self.paths: list[tuple[int, int, int]] = []   # (signed m, n, p) with p = m + n >= 0
        for m, n in itertools.combinations_with_replacement(types, 2):
            for sm in {m, -m}:
                p = sm + n
                if p < 0 or self.out_type.multiplicity(p) == 0:
                    continue
                if (sm, n, p) not in self.paths:
                    self.paths.append((sm, n, p))
        if not self.paths:
            raise ParameterError(f"no product of types {types} gives a type of {self.out_type}")
        self.left, self.right, self.mix = nn.ParameterList(), nn.ParameterList(), \
            nn.ParameterList()
        for sm, n, p in self.paths:
            k = hidden or self.out_type.multiplicity(p)
            cm, cn = self.in_type.multiplicity(abs(sm)), self.in_type.multiplicity(n)
            self.left.append(_init_complex(cm, k, 1 / math.sqrt(cm)))
            self.right.append(_init_complex(cn, k, 1 / math.sqrt(cn)))
            self.mix.append(_init_complex(k, self.out_type.multiplicity(p), 1 / math.sqrt(k)))

    def apply(self, parts: Parts, ops: OperatorBundle | None = None) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        acc: Parts = {}
        for (sm, n, p), A, B, W in zip(self.paths, self.left, self.right, self.mix, strict=True):
            a = _signed(parts, sm)
            b = _signed(parts, n)
            u = a @ _cweight(A).to(a.dtype)
            v = b @ _cweight(B).to(b.dtype)
            y = (u * v) @ _cweight(W).to(a.dtype)
            acc[p] = acc[p] + y if p in acc else y
        return _finish(acc, self.out_type, parts)


def _finish(acc: Parts, out_type: FieldType, parts: Parts) -> Parts:
    ref = next(iter(parts.values()))
    real = ref.real.dtype if ref.is_complex() else ref.dtype
    out = {}
    for m, n in out_type:
        if n in acc:
            out[n] = acc[n].real if n == 0 else acc[n]
        else:
            out[n] = torch.zeros(ref.shape[0], m, device=ref.device,
                                 dtype=real if n == 0 else complex_dtype(real))
    return out


class ProductBasis(GaugeModule):
    """Higher-order product basis of correlation order ``nu <= 3`` (MACE-style, THEORY.md 4).

    The single-particle features (typically diffused: the pooled one-particle basis ``A`` of
    ACE) are mixed into ``channels`` complex channels per type; then, channel by channel,

        ``B^{(p)}_c = sum_{paths} w_{path, c} prod_xi A^{(s_xi)}_c``

    over all multisets of signed types ``s_1 <= ... <= s_nu'`` (``nu' = 1..order``; a negative
    type is the conjugate) whose sum is the output type ``p`` (the SO(2) group average,
    THEORY.md 4.2, keeps exactly these). Products are formed by a prefix tree, one
    elementwise product per path; the ``C^nu`` product space is never materialized. A final
    complex linear map per type gives ``out_type``. The layer is a polynomial of degree
    ``order`` in its input (homogeneous with ``homogeneous=True``).
    """

    def __init__(self, in_type: Any, out_type: Any, *, order: int = 2,
                 channels: int | None = None, homogeneous: bool = False) -> None:
        super().__init__()
        if order not in (1, 2, 3):
            raise ParameterError(f"order (correlation order nu) must be 1, 2 or 3, got {order}")
        self.in_type = FieldType(in_type).simplify()
        self.out_type = FieldType(out_type).simplify()
        self.order = order
        K = channels or max(m for m, _ in self.in_type)
        self.channels = K
        self.embed = nn.ParameterDict({
            str(n): _init_complex(m, K, 1 / math.sqrt(m)) for m, n in self.in_type})
        signed = sorted({s for n in self.in_type.types for s in ((n, -n) if n else (0,))})
        paths: list[tuple[int, ...]] = []
        orders = (order,) if homogeneous else range(1, order + 1)
        for nu in orders:
            for combo in itertools.combinations_with_replacement(signed, nu):
                p = sum(combo)
                if p >= 0 and self.out_type.multiplicity(p) and (p > 0 or combo <= tuple(
                        sorted(-s for s in combo))):
                    paths.append(combo)
        if not paths:
            raise ParameterError(f"no product of order <= {order} of types {self.in_type.types} "
                                 f"gives a type of {self.out_type}")
        self.paths = paths
        # (input types, paths, output types of the contraction): the static plan of _Contract
        self._plan: _Plan = (self.in_type.types, tuple(paths),
                             tuple(sorted({sum(c) for c in paths})))
        self.path_weights = _init_complex(len(paths), K, 1 / math.sqrt(len(paths)))
        self.readout = nn.ParameterDict({
            str(n): _init_complex(K, m, 1 / math.sqrt(K)) for m, n in self.out_type
            if any(sum(c) == n for c in paths)})

    def embed_features(self, parts: Parts) -> list[torch.Tensor]:
        """Single-particle basis ``A^{(n)} = x^{(n)} E^{(n)}``: one complex ``(V, K)`` per type."""
        out = []
        for _, n in self.in_type:
            x, E = parts[n], self.embed[str(n)]
            if x.is_complex():
                out.append(x @ _cweight(E).to(x.dtype))
            else:   # real x times complex E as one real product, no complex copy of x
                K = E.shape[1]
                out.append(torch.view_as_complex((x @ E.to(x.dtype).reshape(E.shape[0], 2 * K))
                                                 .reshape(x.shape[0], K, 2)))
        return out

    def contract(self, A: list[torch.Tensor], *, reference: bool = False) -> list[torch.Tensor]:
        """``B^{(p)}`` for the output types ``p`` of :attr:`outputs` from the embedded ``A``.

        The fast path is a custom autograd function with a hand-written backward (fused
        multiply-adds, each conjugate formed once); ``reference=True`` is the plain autograd
        prefix tree it is tested against.

        Parameters
        ----------
        A : list of (V, channels) complex Tensor
            One per input type, from :meth:`embed_features`.
        reference : bool
            Use the plain autograd contraction.

        Returns
        -------
        list of (V, channels) complex Tensor
            One per output type of the contraction.
        """
        types = self.in_type.types
        if not isinstance(A, (list, tuple)) or len(A) != len(types):
            raise ParameterError(f"A must be a list of {len(types)} tensors (one per input type "
                                 f"{types}), got {type(A).__name__} of length "
                                 f"{len(A) if isinstance(A, (list, tuple)) else '-'}")
        V = A[0].shape[0] if isinstance(A[0], torch.Tensor) else -1
        for n, a in zip(types, A, strict=True):
            if not (isinstance(a, torch.Tensor) and a.is_complex()
                    and a.shape == (V, self.channels) and a.dtype == A[0].dtype):
                raise ParameterError(
                    f"A[type {n}] must be a complex ({V}, {self.channels}) tensor of one dtype "
                    f"with the others, got "
                    f"{(a.dtype, tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a)}")
        w = _cweight(self.path_weights).to(A[0].dtype)
        if reference:
            return _contract_reference(self._plan, w, A)
        return list(_Contract.apply(self._plan, w, *A))

    def apply(self, parts: Parts, ops: OperatorBundle | None = None) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        B = self.contract(self.embed_features(parts))
        acc = {p: b @ _cweight(self.readout[str(p)]).to(b.dtype)
               for p, b in zip(self._plan[2], B, strict=True)}
        return _finish(acc, self.out_type, parts)


_Plan = tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[int, ...]]


def _signed_basis(types: tuple[int, ...], A: list[torch.Tensor], *, resolve: bool
                  ) -> dict[int, torch.Tensor]:
    out = {}
    for n, a in zip(types, A, strict=True):
        out[n] = a
        if n:
            out[-n] = a.conj().resolve_conj() if resolve else a.conj()
    return out


def _products(S: dict[int, torch.Tensor]) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """Memoized ``prod_xi S[s_xi]`` over sorted combos, built by a prefix tree."""
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def product(combo: tuple[int, ...]) -> torch.Tensor:
        if combo not in cache:
            cache[combo] = S[combo[0]] if len(combo) == 1 else \
                product(combo[:-1]) * S[combo[-1]]
        return cache[combo]
    return product


def _contract_reference(plan: _Plan, w: torch.Tensor, A: list[torch.Tensor]
                        ) -> list[torch.Tensor]:
    """``B^{(p)} = sum_{paths -> p} w_path * prod A^{(s)}``, plain autograd (the reference)."""
    types, paths, outputs = plan
    product = _products(_signed_basis(types, A, resolve=False))
    B: dict[int, torch.Tensor] = {}
    for i, combo in enumerate(paths):
        p = sum(combo)
        term = product(combo) * w[i]
        B[p] = B[p] + term if p in B else term
    return [B[p] for p in outputs]


class _Contract(torch.autograd.Function):
    """The product-basis contraction with a hand-written backward (see ``contract``).

    Every signed type ``s`` is treated as its own variable ``A^{(s)}`` (``A^{(-n)} =
    conj A^{(n)}``); the torch gradient of path ``w prod_xi A^{(s_xi)}`` with respect to
    factor ``xi`` is ``g conj(w) prod_{zeta != xi} conj(A^{(s_zeta)})`` and the conjugate
    variables fold back as ``grad A^{(n)} = D^{(n)} + conj(D^{(-n)})``.
    """

    @staticmethod
    def forward(ctx: Any, plan: _Plan, w: torch.Tensor, *A: torch.Tensor) -> tuple:
        types, paths, outputs = plan
        S = _signed_basis(types, list(A), resolve=True)
        product = _products(S)
        B: dict[int, torch.Tensor] = {}
        for i, combo in enumerate(paths):
            p = sum(combo)
            if p in B:
                B[p].addcmul_(product(combo), w[i])
            else:
                B[p] = product(combo) * w[i]
        ctx.plan, ctx.S, ctx.product = plan, S, product
        ctx.save_for_backward(w, *A)
        return tuple(B[p] for p in outputs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        types, paths, outputs = ctx.plan
        w, *A = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (e.g. forces of a learned energy): differentiate the plain
            # autograd contraction instead, so that higher derivatives exist
            inputs = [w, *A]
            needed = [x for x, need in zip(inputs, ctx.needs_input_grad[1:], strict=True)
                      if need]
            B = _contract_reference(ctx.plan, w, A)
            pairs = [(b, g) for b, g in zip(B, grads, strict=True) if g is not None]
            got = iter(torch.autograd.grad([b for b, _ in pairs], needed,
                                           [g for _, g in pairs], create_graph=True,
                                           allow_unused=True))
            return (None, *(next(got) if need else None
                            for need in ctx.needs_input_grad[1:]))
        product, S = ctx.product, ctx.S
        # conjugates of the factors (conj A^{(0)} is not A^{(0)}: the embedded scalars are
        # complex)
        Sc = {s: S[-s] for s in S if s}
        if 0 in S:
            Sc[0] = S[0].conj().resolve_conj()
        conj_product = _products(Sc)
        G = dict(zip(outputs, grads, strict=True))
        gw = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        D: dict[int, torch.Tensor] = {}
        for i, combo in enumerate(paths):
            g = G[sum(combo)]
            if g is None:
                continue
            if gw is not None:
                gw[i] = torch.linalg.vecdot(product(combo), g, dim=0)
            gi = g * w[i].conj()
            for j, s in enumerate(combo):
                others = combo[:j] + combo[j + 1:]
                if not others:
                    D[s] = D[s] + gi if s in D else gi
                    continue
                conj_others = conj_product(others)
                if s in D:
                    D[s].addcmul_(gi, conj_others)
                else:
                    D[s] = gi * conj_others
        gA = []
        for n, need in zip(types, ctx.needs_input_grad[2:], strict=True):
            if not need:
                gA.append(None)
                continue
            d = D.get(n)
            if n and -n in D:
                d = D[-n].conj() if d is None else d + D[-n].conj()
            gA.append(d)
        return (None, gw, *gA)


class AnisotropicConv(GaugeModule):
    """Transported message passing with angular kernels ``exp(1j k phi)`` (GEM-CNN-style).

    The explicit Euler step of an anisotropic diffusion whose conductivity has Fourier modes
    ``k = -K..K`` (THEORY.md 4.3): the message from ``j`` to ``i`` is
    ``w_ij / m_i exp(1j k phi_{i->j}) r_ji^n x_j`` (type ``n + k`` at ``i``), minus
    ``d_i / m_i x_i`` for ``k = 0``. For every input type ``n`` and output type ``p`` the
    frequencies ``k = p - n`` and, through conjugation, ``k = -p - n`` contribute, each with its
    own complex channel mixing; a pointwise self-interaction is added.
    """

    def __init__(self, in_type: Any, out_type: Any, *, max_frequency: int = 1) -> None:
        super().__init__()
        self.in_type = FieldType(in_type).simplify()
        self.out_type = FieldType(out_type).simplify()
        self.max_frequency = int(max_frequency)
        self.routes: list[tuple[int, int, int, bool]] = []   # (n, k, p, conj)
        for _, n in self.in_type:
            for _, p in self.out_type:
                for k, conj in ((p - n, False), (-p - n, True)):
                    if abs(k) <= self.max_frequency and not (conj and p == 0) and \
                            (n, k, p, conj) not in self.routes:
                        self.routes.append((n, k, p, conj))
        self.kernels = nn.ParameterList()
        for n, _, p, _ in self.routes:
            cin = self.in_type.multiplicity(n)
            self.kernels.append(_init_complex(cin, self.out_type.multiplicity(p),
                                              1 / math.sqrt(cin)))
        self.self_interaction = GaugeLinear(self.in_type, self.out_type)

    def apply(self, parts: Parts, ops: OperatorBundle) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        acc = dict(self.self_interaction.apply(parts))
        d = ops.degree()[:, None]
        for (n, k, p, conj), W in zip(self.routes, self.kernels, strict=True):
            x = parts[n]
            x = x if x.is_complex() else x.to(complex_dtype(x.dtype))
            msg = sparse_product(ops.edge_operator(n, k), x, ops.edge_operator_adjoint(n, k))
            if k == 0:
                msg = msg - d * x
            if conj:
                msg = msg.conj()
            y = msg @ _cweight(W).to(x.dtype)
            y = y.real if p == 0 else y
            acc[p] = acc[p] + y
        return acc


# ---------------------------------------------------------------------- nonlinearities
class NormNonlinearity(GaugeModule):
    """Norm nonlinearity: ``z -> sigmoid(|z| + b) z`` on types ``n >= 1``.

    A function of the invariant ``|z|`` times the phase of ``z``; ``activation`` on scalars.
    """

    def __init__(self, field_type: Any, *,
                 activation: Callable[[torch.Tensor], torch.Tensor] = nn.functional.silu
                 ) -> None:
        super().__init__()
        self.in_type = self.out_type = FieldType(field_type).simplify()
        self.activation = activation
        self.bias = nn.ParameterDict({str(n): nn.Parameter(torch.zeros(m))
                                      for m, n in self.in_type if n})

    def apply(self, parts: Parts, ops: OperatorBundle | None = None) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        out = {}
        for n, z in parts.items():
            if n == 0:
                out[0] = self.activation(z)
            else:
                gate = torch.sigmoid(z.abs() + self.bias[str(n)].to(z.real.dtype))
                out[n] = z * gate.to(z.dtype)
        return out


class GatedNonlinearity(GaugeModule):
    """Gated nonlinearity: ``sigmoid(gate) z`` on every non-scalar channel.

    ``out_type = field_type``; ``in_type`` adds one gate per non-scalar channel as extra
    scalars right after the scalars of ``field_type``. Scalars: ``activation``; type-``n``
    channel ``c``: ``sigmoid(gate_c) z_c``.
    """

    def __init__(self, field_type: Any, *,
                 activation: Callable[[torch.Tensor], torch.Tensor] = nn.functional.silu
                 ) -> None:
        super().__init__()
        self.out_type = FieldType(field_type).simplify()
        self.n_gates = sum(m for m, n in self.out_type if n)
        c0 = self.out_type.multiplicity(0)
        self.in_type = FieldType([(c0 + self.n_gates, 0)] + [t for t in self.out_type if t[1]])
        self.activation = activation

    def apply(self, parts: Parts, ops: OperatorBundle | None = None) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        c0 = self.out_type.multiplicity(0)
        s = parts[0]
        out = {0: self.activation(s[:, :c0])} if c0 else {}
        gates = torch.sigmoid(s[:, c0:])
        start = 0
        for m, n in self.out_type:
            if n:
                out[n] = parts[n] * gates[:, start:start + m].to(parts[n].dtype)
                start += m
        return out


class RegularNonlinearity(GaugeModule):
    """GEM-CNN's regular nonlinearity: sample on ``N`` angles, apply, transform back.

    ``field_type`` must hold the same number ``C`` of channels of every type ``0..B``: channel
    ``c`` is the band-limited function ``f_c(theta) = a_c + 2 sum_n Re(z_{n,c} exp(1j n theta))``.
    It is sampled at ``theta_s = 2 pi s / N``, ``activation`` is applied, and the Fourier
    coefficients up to ``B`` are recomputed. Exact under rotations by multiples of ``2 pi / N``;
    for other gauges the error falls as ``N`` grows (aliasing of the activation's harmonics).
    """

    def __init__(self, field_type: Any, n_samples: int = 16, *,
                 activation: Callable[[torch.Tensor], torch.Tensor] = nn.functional.relu
                 ) -> None:
        super().__init__()
        ft = FieldType(field_type).simplify()
        B = ft.max_type
        C = ft.multiplicity(0)
        if ft.types != tuple(range(B + 1)) or any(m != C for m, _ in ft):
            raise ParameterError(f"the regular nonlinearity needs Cx0+Cx1+...+CxB with one C, "
                                 f"got {ft}")
        if n_samples < 2 * B + 1:
            raise ParameterError(f"n_samples must be >= 2B+1 = {2 * B + 1}, got {n_samples}")
        self.in_type = self.out_type = ft
        self.n_samples, self.band, self.activation = int(n_samples), B, activation

    def _basis(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``(N, B)`` samples ``exp(1j n theta_s)``."""
        theta = 2 * math.pi * torch.arange(self.n_samples, dtype=torch.float64) / self.n_samples
        k = torch.arange(1, self.band + 1, dtype=torch.float64)
        return torch.exp(1j * k[None, :] * theta[:, None]).to(device=device, dtype=dtype)

    def apply(self, parts: Parts, ops: OperatorBundle | None = None) -> Parts:
        """Apply the layer to features split by type (see :meth:`GaugeModule.apply`)."""
        a = parts[0]                                                     # (V, C)
        E = self._basis(complex_dtype(a.dtype), a.device)                 # (N, B)
        if self.band:
            Z = torch.stack([parts[n] for n in range(1, self.band + 1)], dim=-1)   # (V, C, B)
            f = a[..., None] + 2 * (Z @ E.T).real                        # (V, C, N)
        else:
            f = a[..., None].expand(*a.shape, self.n_samples)
        g = self.activation(f)
        out = {0: g.mean(dim=-1)}
        if self.band:
            coef = (g.to(E.dtype) @ E.conj()) / self.n_samples           # (V, C, B)
            for n in range(1, self.band + 1):
                out[n] = coef[..., n - 1]
        return out


# ---------------------------------------------------------------------- outputs
def invariants(parts: Parts) -> torch.Tensor:
    """Gauge-invariant scalars ``(V, C_0 + sum C_n)``: the scalars and the norms ``|z|``."""
    cols = [parts[0]] if 0 in parts else []
    cols += [parts[n].abs() for n in sorted(parts) if n]
    return torch.cat(cols, dim=-1)


def global_pool(x: torch.Tensor, ops: OperatorBundle) -> torch.Tensor:
    """Mass-weighted mean ``sum_i m_i x_i / sum_i m_i`` of invariant features ``(V, C) -> (C,)``."""
    m = ops.mass.to(x.dtype)
    return (m[:, None] * x).sum(dim=0) / m.sum()


def to_faces(x: torch.Tensor, ops: OperatorBundle) -> torch.Tensor:
    """Mean of invariant vertex features over each triangle: ``(V, C) -> (F, C)``."""
    if ops.faces.shape[0] == 0:
        raise ParameterError("face outputs need a mesh bundle; this one is a point cloud")
    return x[ops.faces].mean(dim=1)
