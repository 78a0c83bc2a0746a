"""Layers: exact gauge equivariance (library harness), negative controls, reference oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from torch import nn

import manifoldmp as mmp
from manifoldmp import nn as mnn
from manifoldmp.errors import ParameterError
from manifoldmp.testing import TOL, assert_gauge_equivariant, gauge_equivariance_error

FT = "3x0+2x1+2x2"
OUT = "2x0+2x1+1x2"


def bumpy_sphere(level: int = 2, seed: int = 0) -> mmp.Surface:
    S = mmp.meshes.icosphere(level)
    r = 1 + 0.1 * np.random.default_rng(seed).standard_normal((S.n_vertices, 1))
    return mmp.Surface(S.vertices * r, S.faces)


DOMAINS = {
    "mesh": lambda: bumpy_sphere(2),
    "pointcloud": lambda: mmp.PointCloud(bumpy_sphere(2, seed=1).vertices, n_neighbors=12),
}

LAYERS = {
    "diffusion-spectral": lambda: mnn.BundleDiffusion(FT, method="spectral", casimir=True),
    "diffusion-krylov": lambda: mnn.BundleDiffusion(FT, method="krylov", casimir=0.3),
    "diffusion-chebyshev": lambda: mnn.BundleDiffusion(FT, method="chebyshev", casimir=0.3),
    "diffusion-implicit": lambda: mnn.BundleDiffusion(FT, method="implicit", steps=2),
    "diffusion-explicit": lambda: mnn.BundleDiffusion(FT, method="explicit", steps=3),
    "linear": lambda: mnn.GaugeLinear(FT, OUT),
    "gradient": lambda: mnn.Gradient(3),
    "divergence": lambda: mnn.Divergence(2),
    "curl": lambda: mnn.Curl(2),
    "type-product": lambda: mnn.TypeProduct(FT, "2x0+2x1+2x2+1x3+1x4"),
    "product-basis-2": lambda: mnn.ProductBasis(FT, OUT, order=2),
    "product-basis-3": lambda: mnn.ProductBasis(FT, OUT, order=3),
    "anisotropic": lambda: mnn.AnisotropicConv(FT, OUT, max_frequency=2),
    "norm-nonlinearity": lambda: mnn.NormNonlinearity(FT),
    "gated-nonlinearity": lambda: mnn.GatedNonlinearity(FT),
}


@pytest.fixture(scope="module", params=list(DOMAINS))
def domain(request: pytest.FixtureRequest) -> object:
    return DOMAINS[request.param]()


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Nonzero parameters everywhere (biases and Casimirs included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_layer_is_gauge_equivariant(domain: object, name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = randomize(LAYERS[name]())
    err = assert_gauge_equivariant(layer, domain, dtype=dtype, k_eig=domain.n_vertices)
    assert err <= TOL[dtype]


# ---------------------------------------------------------------------- negative controls
class ReluOnParts(mnn.GaugeModule):
    def __init__(self) -> None:
        super().__init__()
        self.in_type = self.out_type = mnn.FieldType(FT)

    def forward(self, x: torch.Tensor, ops: mnn.OperatorBundle) -> torch.Tensor:
        return torch.relu(x)


class ConjugatedTransport(mnn.GaugeModule):
    """Explicit diffusion with r_ij instead of r_ji in row i (THEORY.md 3.5 step 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_type = self.out_type = mnn.FieldType("2x1")

    def forward(self, x: torch.Tensor, ops: mnn.OperatorBundle) -> torch.Tensor:
        z = self.in_type.split(x)[1]
        src, tgt = ops.edge_index
        w = (ops.edge_weight / ops.mass[tgt])[:, None]
        msg = w * torch.exp(-1j * ops.transport)[:, None] * z[src]
        y = z - 0.01 * ops.degree()[:, None] * z
        y = y.index_add(0, tgt, 0.01 * msg)
        return self.in_type.merge({1: y})


class GeneralRealMixing(mnn.GaugeModule):
    def __init__(self) -> None:
        super().__init__()
        self.in_type = self.out_type = mnn.FieldType("1x1")
        self.register_buffer("W", torch.tensor([[1.0, 0.4], [-0.2, 0.7]]))

    def forward(self, x: torch.Tensor, ops: mnn.OperatorBundle) -> torch.Tensor:
        return x @ self.W.to(x.dtype)


@pytest.mark.parametrize("control", [ReluOnParts, ConjugatedTransport, GeneralRealMixing])
def test_negative_controls_fail_the_harness(control: type) -> None:
    S = bumpy_sphere(1)
    with pytest.raises(AssertionError, match="not gauge-equivariant"):
        assert_gauge_equivariant(control(), S, k_eig=0)
    assert gauge_equivariance_error(control(), S, k_eig=0) > 1e-2


# ---------------------------------------------------------------------- oracles
def explicit_loop_reference(S: mmp.Surface, z: np.ndarray, n: int, tau: float, steps: int
                            ) -> np.ndarray:
    """u_i <- u_i - tau/m_i sum_j w_ij (u_i - r_ji^n u_j), one python loop over mesh edges."""
    m = S.vertex_areas
    w = S.cotan_weights
    rho = S.edge_transport_angles          # rho_{a->b} for edge (a, b)
    u = z.astype(np.complex128)
    for _ in range(steps):
        du = np.zeros_like(u)
        for e, (a, b) in enumerate(S.edges):
            # message b -> a uses r_ba = exp(1j rho_{b->a}) = exp(-1j rho_{a->b})
            du[a] += w[e] * (u[a] - np.exp(-1j * n * rho[e]) * u[b])
            du[b] += w[e] * (u[b] - np.exp(1j * n * rho[e]) * u[a])
        u = u - tau * du / m[:, None]
    return u


@pytest.mark.parametrize("n", [0, 1, 2])
def test_explicit_euler_layer_equals_loop_over_edges(n: int) -> None:
    S = bumpy_sphere(1)
    ops = mnn.precompute(S, max_type=2, k_eig=0)
    rng = np.random.default_rng(n)
    z = rng.standard_normal((S.n_vertices, 3)) + (1j * rng.standard_normal((S.n_vertices, 3))
                                                  if n else 0)
    t = torch.tensor([1e-3, 2e-3, 4e-3], dtype=torch.float64)
    got = mnn.heat_flow(ops, n, torch.from_numpy(z), t, method="explicit", steps=2).numpy()
    for c in range(3):
        want = explicit_loop_reference(S, z[:, c:c + 1], n, float(t[c]) / 2, 2)[:, 0]
        assert np.abs(got[:, c] - want).max() < 1e-12 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("t", [1e-3, 1e-1, 1.0])   # 1.0: output a few % of the input
def test_diffusion_methods_against_dense_matrix_functions(n: int, t: float) -> None:
    S = bumpy_sphere(1)
    ops = mnn.precompute(S, max_type=2, k_eig=S.n_vertices)
    A = mmp.connection_laplacian(S, n).toarray() / S.vertex_areas[:, None]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((S.n_vertices, 2)) + (1j * rng.standard_normal((S.n_vertices, 2))
                                                  if n else 0)
    tt = torch.full((2,), t, dtype=torch.float64)
    xt = torch.from_numpy(x)
    kappa = 0.7
    exact = sla.expm(-t * A) @ x * math.exp(-t * kappa * n * n)
    scale = np.abs(exact).max()
    for method, tol in (("spectral", 1e-10), ("krylov", 1e-8), ("chebyshev", 1e-8)):
        y = mnn.heat_flow(ops, n, xt, tt, method=method, casimir=kappa).numpy()
        assert np.abs(y - exact).max() < tol * scale, method
    I = np.eye(S.n_vertices)
    impl = np.linalg.matrix_power(np.linalg.inv(I + t / 3 * A), 3) @ x
    y = mnn.heat_flow(ops, n, xt, tt, method="implicit", steps=3).numpy()
    assert np.abs(y - impl).max() < 1e-9 * np.abs(impl).max()
    expl = np.linalg.matrix_power(I - t / 4 * A, 4) @ x
    y = mnn.heat_flow(ops, n, xt, tt, method="explicit", steps=4).numpy()
    assert np.abs(y - expl).max() < 1e-12 * np.abs(expl).max()
    # float32 paths
    o32 = ops.to(dtype=torch.float32)
    x32 = xt.to(torch.complex64 if n else torch.float32)
    for method in ("spectral", "krylov", "chebyshev", "implicit"):
        y = mnn.heat_flow(o32, n, x32, tt.float(), method=method, casimir=kappa).numpy()
        ref = exact if method != "implicit" else sla.expm(-t * A) @ x * 0 + mnn.heat_flow(
            ops, n, xt, tt, method="implicit", casimir=kappa).numpy()
        assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max(), method


@pytest.mark.parametrize("method", ["chebyshev", "krylov"])
@pytest.mark.parametrize("n", [0, 2])
def test_float32_flows_at_long_times(n: int, method: str) -> None:
    """t = 1: the output is 2-12 % of the input and float32 rounding alone, relative to the
    input, would leave 2e-4 to 5e-4 (Chebyshev) and 4e-5 to 1e-4 (Lanczos); both see it and
    redo the flow in float64."""
    S = bumpy_sphere(2)
    ops = mnn.precompute(S, max_type=2, k_eig=20).to(dtype=torch.float32)
    A = mmp.connection_laplacian(S, n).toarray() / S.vertex_areas[:, None]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((S.n_vertices, 2)) + (1j * rng.standard_normal((S.n_vertices, 2))
                                                  if n else 0)
    exact = sla.expm(-A) @ x
    x32 = torch.from_numpy(x).to(torch.complex64 if n else torch.float32)
    y = mnn.heat_flow(ops, n, x32, torch.ones(2), method=method).numpy()
    assert y.dtype == (np.complex64 if n else np.float32)
    # Lanczos redone in float64 to its tol (1e-8): 3e-7 and 7e-7 here, 1.2e-5 and 2e-5 without
    assert np.abs(y - exact).max() < (3e-5 if method == "chebyshev" else 3e-6) * np.abs(exact).max()


@pytest.mark.parametrize("method", ["spectral", "krylov", "chebyshev", "implicit", "explicit"])
@pytest.mark.parametrize("n", [0, 1])
def test_diffusion_gradcheck_in_x_and_t(method: str, n: int) -> None:
    S = mmp.meshes.icosphere(1)
    ops = mnn.precompute(S, max_type=1, k_eig=S.n_vertices)
    g = torch.Generator().manual_seed(n)
    dt = torch.complex128 if n else torch.float64
    x = torch.randn(S.n_vertices, 2, generator=g, dtype=dt, requires_grad=True)
    t = torch.tensor([0.05, 0.2], dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mnn.heat_flow(ops, n, x, t, method=method, casimir=0.4, steps=2, tol=1e-13)

    assert torch.autograd.gradcheck(f, (x, t), atol=1e-6, rtol=1e-5)


def test_mass_is_conserved_by_scalar_diffusion() -> None:
    S = bumpy_sphere(2)
    ops = mnn.precompute(S, max_type=0, k_eig=S.n_vertices)
    x = torch.randn(S.n_vertices, 3, dtype=torch.float64)
    t = torch.tensor([1e-3, 1e-2, 1.0], dtype=torch.float64)
    m = ops.mass[:, None]
    for method in ("spectral", "krylov", "chebyshev", "implicit", "explicit"):
        y = mnn.heat_flow(ops, 0, x, t, method=method, steps=3 if method == "implicit" else 400,
                          tol=1e-13)
        assert torch.allclose((m * y).sum(0), (m * x).sum(0), rtol=0, atol=1e-11), method


def test_implicit_flags_an_indefinite_operator() -> None:
    S = bumpy_sphere(1)
    ops = mnn.precompute(S, max_type=1, k_eig=0)
    bad = mnn.OperatorBundle(**{**{f: getattr(ops, f) for f in ops.__dataclass_fields__
                                   if f != "_cache"},
                                "laplacians": tuple(-L for L in ops.laplacians)})
    x = torch.randn(S.n_vertices, 1, dtype=torch.complex128)
    with pytest.raises(mnn.SolverNotConverged, match="positive definite"):
        mnn.heat_flow(bad, 1, x, torch.tensor([10.0], dtype=torch.float64), method="implicit")


# ---------------------------------------------------------------------- vector calculus
def test_divergence_is_minus_the_mass_adjoint_of_the_gradient() -> None:
    S = bumpy_sphere(2)
    ops = mnn.precompute(S, max_type=1, k_eig=0)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(S.n_vertices, 2, generator=g, dtype=torch.float64)
    X = torch.randn(S.n_vertices, 2, generator=g, dtype=torch.complex128)
    m = ops.mass[:, None]
    Gu = mnn.Gradient(2).apply({0: u}, ops)[1]
    divX = mnn.Divergence(2).apply({1: X}, ops)[0]
    lhs = (m * (Gu.conj() * X).real).sum(0)
    rhs = -(m * u * divX).sum(0)
    assert torch.allclose(lhs, rhs, atol=1e-12)
    # curl of X is the divergence of X rotated by -90 degrees
    curlX = mnn.Curl(2).apply({1: X}, ops)[0]
    assert torch.allclose(curlX, mnn.Divergence(2).apply({1: -1j * X}, ops)[0], atol=1e-13)


def test_gradient_of_a_linear_function_on_a_flat_grid() -> None:
    S = mmp.meshes.flat_grid(8, 8)
    ops = mnn.precompute(S, max_type=1, k_eig=0)
    u = torch.as_tensor(S.vertices[:, :1] * 2 - S.vertices[:, 1:2])
    Gu = mnn.Gradient(1).apply({0: u}, ops)[1][:, 0]
    fr = torch.as_tensor(S.frames.copy())
    want = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    want = (fr[:, 0] @ want) + 1j * (fr[:, 1] @ want)
    assert torch.allclose(Gu, want, atol=1e-12)


# ---------------------------------------------------------------------- products
@pytest.mark.parametrize("order", [1, 2, 3])
def test_product_basis_is_a_polynomial_of_degree_order(order: int) -> None:
    S = bumpy_sphere(1)
    ops = mnn.precompute(S, max_type=2, k_eig=0)
    torch.manual_seed(order)
    layer = mnn.ProductBasis(FT, OUT, order=order).double()
    hom = mnn.ProductBasis(FT, OUT, order=order, homogeneous=True).double()
    x = mnn.FieldType(FT).random(S.n_vertices, dtype=torch.float64)
    with torch.no_grad():
        base = hom(x, ops)
        assert torch.allclose(hom(2.5 * x, ops), 2.5**order * base, rtol=1e-12, atol=1e-12)
        s = torch.arange(order + 2, dtype=torch.float64) - 1.0
        ys = torch.stack([layer(si * x, ops) for si in s])       # (order+2, V, D)
    # degree <= order: the (order+1)-th finite difference vanishes; the order-th does not
    diff = ys
    for _ in range(order):
        diff = diff[1:] - diff[:-1]
    assert float(diff.abs().max()) > 1e-3
    last = diff[1:] - diff[:-1]
    assert float(last.abs().max()) < 1e-10 * float(ys.abs().max())


@pytest.mark.parametrize(("order", "homogeneous"), [(1, False), (2, False), (2, True),
                                                    (3, False), (3, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_product_contraction_matches_autograd_reference(order: int, homogeneous: bool,
                                                        dtype: torch.dtype) -> None:
    """The hand-written backward of the product basis against plain autograd: values, the
    gradients of every input and of the path weights (one input without gradient)."""
    torch.manual_seed(order)
    layer = mnn.ProductBasis("3x0+2x1+2x2+1x3", "2x0+2x1+1x2+1x3", order=order,
                             homogeneous=homogeneous).to(dtype)
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64
    A = [torch.randn(7, layer.channels, dtype=cd, requires_grad=n != 2)
         for n in layer.in_type.types]
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else \
        {"rtol": 1e-5, "atol": 1e-5}
    results = []
    for ref in (False, True):
        layer.zero_grad()
        for a in A:
            a.grad = None
        B = layer.contract(A, reference=ref)
        loss = sum((b * torch.randn(b.shape, dtype=cd, generator=torch.Generator()
                                    .manual_seed(i))).real.sum() for i, b in enumerate(B))
        loss.backward()
        results.append([*B, layer.path_weights.grad.clone(),
                        *(a.grad for a in A if a.requires_grad)])
    assert A[2].grad is None
    assert len(results[0]) == len(results[1])
    for fast, ref in zip(*results, strict=True):
        assert float(ref.detach().abs().max()) > 0.1
        torch.testing.assert_close(fast, ref, **tol)


def test_product_contraction_double_backward() -> None:
    """Second derivatives (forces of a learned energy) agree with plain autograd."""
    torch.manual_seed(1)
    layer = mnn.ProductBasis("1x0+1x1+1x2", "1x0+1x1+1x2", order=3).double()
    A = [torch.randn(5, layer.channels, dtype=torch.complex128, requires_grad=True)
         for _ in range(3)]
    hessian_vector = []
    for ref in (False, True):
        B = layer.contract(A, reference=ref)
        energy = sum((b * b.conj()).real.sum() for b in B)
        g = torch.autograd.grad(energy, A, create_graph=True)
        hessian_vector.append(torch.autograd.grad(sum(x.abs().square().sum() for x in g),
                                                  [*A, layer.path_weights]))
    for fast, ref in zip(*hessian_vector, strict=True):
        assert float(ref.abs().max()) > 0.1
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(len(layer.paths), layer.channels, dtype=torch.complex128,
                    requires_grad=True)
    from manifoldmp.nn.layers import _Contract

    assert torch.autograd.gradgradcheck(lambda w, *a: _Contract.apply(layer._plan, w, *a),
                                        (w, *A))


def test_product_contraction_gradcheck() -> None:
    torch.manual_seed(0)
    layer = mnn.ProductBasis("1x0+1x1+1x2", "1x0+1x1+1x2", order=3).double()
    A = [torch.randn(4, layer.channels, dtype=torch.complex128, requires_grad=True)
         for _ in range(3)]
    w = torch.randn(len(layer.paths), layer.channels, dtype=torch.complex128,
                    requires_grad=True)
    from manifoldmp.nn.layers import _Contract

    assert torch.autograd.gradcheck(lambda w, *a: _Contract.apply(layer._plan, w, *a), (w, *A))


def test_product_selection_rules_under_random_gauges() -> None:
    """Diffused type 1 x type 2 transforms as type 3, conj(type 1) x type 2 as type 1."""
    S = bumpy_sphere(2)
    alpha = np.random.default_rng(0).uniform(0, 2 * np.pi, S.n_vertices)
    ops = mnn.precompute(S, max_type=2, k_eig=S.n_vertices)
    ops_g = mnn.precompute(S.regauge(alpha), max_type=2, k_eig=S.n_vertices)
    a = torch.as_tensor(alpha)
    rng = np.random.default_rng(1)
    z1 = torch.as_tensor(rng.standard_normal((S.n_vertices, 1)) * (1 + 1j))
    z2 = torch.as_tensor(rng.standard_normal((S.n_vertices, 1)) + 1j)
    t = torch.tensor([0.05], dtype=torch.float64)

    def products(o: mnn.OperatorBundle, u1: torch.Tensor, u2: torch.Tensor) -> tuple:
        d1 = mnn.heat_flow(o, 1, u1, t)
        d2 = mnn.heat_flow(o, 2, u2, t)
        return d1 * d2, d1.conj() * d2

    p3, p1 = products(ops, z1, z2)
    g = torch.exp(-1j * a)[:, None]
    q3, q1 = products(ops_g, g * z1, g**2 * z2)
    assert torch.allclose(q3, g**3 * p3, atol=1e-12)
    assert torch.allclose(q1, g * p1, atol=1e-12)
    assert not torch.allclose(q3, g**1 * p3, atol=1e-3)


# ---------------------------------------------------------------------- regular nonlinearity
def test_regular_nonlinearity_error_shrinks_with_samples_and_is_exact_on_the_grid() -> None:
    S = mmp.meshes.icosphere(1)
    errs = [gauge_equivariance_error(mnn.RegularNonlinearity("2x0+2x1+2x2", N), S, k_eig=0)
            for N in (8, 32, 128)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05 * errs[0]
    N = 16
    layer = mnn.RegularNonlinearity("2x0+2x1+2x2", N)
    ft = layer.in_type
    ops = mnn.precompute(S, max_type=2, k_eig=0)
    x = ft.random(S.n_vertices, dtype=torch.float64)
    alpha = 2 * math.pi / N * torch.randint(0, N, (S.n_vertices,)).double()
    ops_g = mnn.precompute(S.regauge(alpha.numpy()), max_type=2, k_eig=0)
    assert torch.allclose(layer(ft.transform(x, alpha), ops_g), ft.transform(layer(x, ops), alpha),
                          atol=1e-13)


def test_heat_flow_argument_errors() -> None:
    S = mmp.meshes.icosphere(1)
    ops = mnn.precompute(S, max_type=1, k_eig=0)
    V = S.n_vertices
    x = torch.zeros(V, 2, dtype=torch.complex128)
    t = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ParameterError, match="max_type >= 2"):
        mnn.heat_flow(ops, 2, x, t, method="krylov")
    with pytest.raises(ParameterError, match="x must be a"):
        mnn.heat_flow(ops, 1, x[:5], t, method="krylov")
    with pytest.raises(ParameterError, match="must be complex"):
        mnn.heat_flow(ops, 1, x.real, t, method="krylov")
    with pytest.raises(ParameterError, match="one time per channel"):
        mnn.heat_flow(ops, 1, x, t[:1], method="krylov")
    with pytest.raises(ParameterError, match="finite and >= 0"):
        mnn.heat_flow(ops, 1, x, torch.tensor([0.1, -1.0], dtype=torch.float64),
                      method="krylov")
    with pytest.raises(ParameterError, match="finite and >= 0"):
        mnn.heat_flow(ops, 1, x, torch.tensor([0.1, float("nan")], dtype=torch.float64),
                      method="krylov")
    with pytest.raises(ParameterError, match="steps"):
        mnn.heat_flow(ops, 1, x, t, method="explicit", steps=0)


def test_layer_argument_errors() -> None:
    S = mmp.meshes.icosphere(1)
    ops = mnn.precompute(S, max_type=1, k_eig=0)
    lin = mnn.GaugeLinear("2x0+1x1", "1x1")
    with pytest.raises(ParameterError, match="last dimension 4"):
        lin(torch.zeros(S.n_vertices, 3), ops)
    with pytest.raises(ParameterError, match=r"ops\.to"):
        lin(torch.zeros(S.n_vertices, 4, dtype=torch.float32), ops)
    with pytest.raises(ParameterError, match="vertices"):
        lin(torch.zeros(5, 4, dtype=torch.float64), ops)
    with pytest.raises(ParameterError, match="max_type >= 2"):
        mnn.GaugeLinear("1x2", "1x2")(torch.zeros(S.n_vertices, 2, dtype=torch.float64), ops)
    with pytest.raises(ParameterError, match="method"):
        mnn.BundleDiffusion("1x0", method="magic")
    with pytest.raises(ParameterError, match="order"):
        mnn.ProductBasis("1x0", "1x0", order=4)
    with pytest.raises(ParameterError, match="n_samples"):
        mnn.RegularNonlinearity("1x0+1x1+1x2", 4)
    with pytest.raises(ParameterError, match="one C"):
        mnn.RegularNonlinearity("2x0+1x1")
    with pytest.raises(ParameterError, match="casimir"):
        mnn.BundleDiffusion("1x0", casimir=-1.0)
    with pytest.raises(ParameterError, match="time_unit"):
        mnn.BundleDiffusion("1x0", time_unit="days")
    with pytest.raises(ParameterError, match="too small"):
        mnn.GaugeNet("1x0", "1x0", width=3)
    with pytest.raises(ParameterError, match="blocks"):
        mnn.GaugeNet("1x0", "1x0", blocks=0)
    with pytest.raises(ParameterError, match="OperatorBundle"):
        lin(torch.zeros(S.n_vertices, 4, dtype=torch.float64), object())
    with pytest.raises(ParameterError, match="eigenpairs"):
        mnn.BundleDiffusion("1x0").double()(torch.zeros(S.n_vertices, 1, dtype=torch.float64),
                                             ops)
    # the low-level pieces validate too: sparse products and product-basis contractions
    G, GH = ops.gradient, ops.gradient_adjoint()
    with pytest.raises(ParameterError, match="sparse"):
        mnn.functional.sparse_product(G.to_dense(), torch.zeros(S.n_vertices, 1), GH)
    with pytest.raises(ParameterError, match="AH must have shape"):
        mnn.functional.sparse_product(G, torch.zeros(S.n_vertices, 1, dtype=G.dtype),
                                      torch.eye(3, dtype=G.dtype).to_sparse())
    with pytest.raises(ParameterError, match="dtype"):
        mnn.functional.sparse_product(G, torch.zeros(S.n_vertices, 1), GH)
    with pytest.raises(ParameterError, match=r"x must be a \(42, C\)"):
        mnn.functional.sparse_product(G, torch.zeros(5, 1, dtype=G.dtype), GH)
    pb = mnn.ProductBasis("2x0+2x1", "2x0", order=2)
    A = pb.embed_features({0: torch.zeros(S.n_vertices, 2, dtype=torch.float64),
                           1: torch.zeros(S.n_vertices, 2, dtype=torch.complex128)})
    with pytest.raises(ParameterError, match="list of 2 tensors"):
        pb.contract(A[:1])
    with pytest.raises(ParameterError, match="complex"):
        pb.contract([A[0].real, A[1]])
    with pytest.raises(ParameterError, match="one dtype"):
        pb.contract([A[0], A[1].to(torch.complex64)])


@pytest.mark.parametrize("method", ["chebyshev", "krylov"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_flows_fused_equal_torch_and_dense(n: int, dtype: torch.dtype, method: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide inputs take the fused CPU kernels; narrow ones torch's product; both equal expm."""
    from manifoldmp.nn import functional as F

    S = bumpy_sphere(2)
    ops = mnn.precompute(S, max_type=2, k_eig=0).to(dtype=dtype)
    A = mmp.connection_laplacian(S, n).toarray() / S.vertex_areas[:, None]
    sq = np.sqrt(S.vertex_areas)
    cdt = (torch.complex64 if dtype == torch.float32 else torch.complex128) if n else dtype
    g = torch.Generator().manual_seed(n)
    C = 48   # 192 to 768 bytes per row: fused
    x = torch.randn(S.n_vertices, C, dtype=cdt, generator=g)
    t = torch.logspace(-4, 0, C, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert F._fused_operator(ops, n, x) is not None
    # narrow inputs: torch's product below 128 bytes per row for a real operator (here 12
    # to 24 bytes), below 32 for a complex one (24 bytes for 3 complex64 channels; 48 for
    # complex128 still fused); 1 channel (8 to 16 bytes) always torch's
    narrow = F._fused_operator(ops, n, x[:, :3])
    assert (narrow is not None) == (n != 0 and 3 * x.element_size() >= 32)
    assert F._fused_operator(ops, n, x[:, :1]) is None
    calls = []
    if method == "krylov":   # the fused Lanczos runs (and, for float32, its float64 redo)
        from manifoldmp.spectral import krylov as K
        real = K.lanczos_expm_fused
        monkeypatch.setattr(K, "lanczos_expm_fused",
                            lambda op, *a, **k: calls.append(op.dtype) or real(op, *a, **k))
    y = mnn.heat_flow(ops, n, x, t, method=method, casimir=0.5, tol=tol)
    if method == "chebyshev":
        # float32 at t = 1 is below its a-priori rounding floor: redone in float64, fused too
        assert ("fused", n, "float64") in ops._cache
    else:   # Lanczos' a-posteriori estimate: the float32 run stands except for n = 2, whose
        # output at t = 1 is small against the input; the float64 redo is fused as well
        single = np.float32 if dtype == torch.float32 else np.float64
        redo = n == 2 and dtype == torch.float32
        assert calls == [single] + ([np.float64] if redo else [])
        assert (("fused", n, "float64") in ops._cache) == (redo or dtype == torch.float64)
    monkeypatch.setattr(F, "FUSED", False)
    assert F._fused_operator(ops, n, x) is None
    y_ref = mnn.heat_flow(ops, n, x, t, method=method, casimir=0.5, tol=tol)
    assert y.dtype == x.dtype
    same = 1e-12 if dtype == torch.float64 else 2e-5
    assert (y - y_ref).abs().max() <= same * y_ref.abs().max()
    xd = x.numpy().astype(np.complex128 if n else np.float64)
    w, U = np.linalg.eigh(mmp.connection_laplacian(S, n).toarray() / sq[:, None] / sq[None, :])
    exact = (U @ (np.exp(-np.outer(w, t.double().numpy())) * (U.conj().T @ (sq[:, None] * xd))))
    exact /= sq[:, None]     # exp(-t M^-1 L) = M^-1/2 exp(-t M^-1/2 L M^-1/2) M^1/2
    assert np.allclose(exact[:, 7], sla.expm(-float(t[7]) * A) @ xd[:, 7], rtol=0,
                       atol=1e-12 * np.abs(xd).max())
    exact *= np.exp(-t.double().numpy() * 0.5 * n * n)[None, :]
    err = np.abs(y.numpy() - exact).max(axis=0) / np.abs(exact).max(axis=0)
    assert err.max() < (1e-8 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("method", ["chebyshev", "krylov"])
@pytest.mark.parametrize("n", [0, 1])
def test_fused_flow_gradcheck(n: int, method: str) -> None:
    from manifoldmp.nn import functional as F

    S = mmp.meshes.icosphere(1)
    ops = mnn.precompute(S, max_type=1, k_eig=0)
    g = torch.Generator().manual_seed(n)
    dt = torch.complex128 if n else torch.float64
    C = 8 if n else 16                                     # 128 bytes per row
    x = torch.randn(S.n_vertices, C, generator=g, dtype=dt, requires_grad=True)
    t = torch.logspace(-2, -0.5, C, dtype=torch.float64).requires_grad_(True)
    assert F._fused_operator(ops, n, x.detach()) is not None

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mnn.heat_flow(ops, n, x, t, method=method, casimir=0.4, tol=1e-13)

    assert torch.autograd.gradcheck(f, (x, t), atol=1e-6, rtol=1e-5)
