"""GaugeNet: equivariance, invariances, discretization robustness, outputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import manifoldmp as mmp
from manifoldmp import nn as mnn
from manifoldmp.errors import ParameterError
from manifoldmp.testing import assert_gauge_equivariant
from tests.conftest import shared_mesh
from tests.nn.test_layers import DOMAINS, randomize

FULL = os.environ.get("MANIFOLDMP_FULL_TESTS") == "1"


@pytest.fixture(scope="module", params=list(DOMAINS))
def domain(request: pytest.FixtureRequest) -> object:
    return DOMAINS[request.param]()


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaugenet_is_gauge_equivariant(domain: object, order: int, dtype: torch.dtype) -> None:
    torch.manual_seed(order)
    net = randomize(mnn.GaugeNet("2x0+1x1+1x2", "1x0+2x1+1x2", width=25, blocks=2,
                                 order=order, casimir=True))
    assert_gauge_equivariant(net, domain, dtype=dtype, k_eig=domain.n_vertices)


@pytest.mark.parametrize("method", ["krylov", "chebyshev", "implicit", "explicit"])
def test_gaugenet_other_diffusions_are_equivariant(method: str) -> None:
    torch.manual_seed(0)
    net = randomize(mnn.GaugeNet("2x0+1x1", "1x0+1x1+1x2", width=15, blocks=2, order=2,
                                 method=method, steps=2))
    assert_gauge_equivariant(net, DOMAINS["mesh"](), k_eig=0)


@pytest.mark.parametrize("outputs_at", ["global", "faces"])
def test_invariant_outputs(outputs_at: str) -> None:
    torch.manual_seed(0)
    net = randomize(mnn.GaugeNet("2x0+1x1", "3x0", width=15, blocks=2, outputs_at=outputs_at))
    S = DOMAINS["mesh"]()
    assert_gauge_equivariant(net, S, k_eig=S.n_vertices)
    ops = mnn.precompute(S, max_type=2, k_eig=S.n_vertices)
    x = torch.randn(S.n_vertices, 4, dtype=torch.float64)
    out = net.double()(x, ops)
    assert out.shape == ((3,) if outputs_at == "global" else (S.n_faces, 3))
    with pytest.raises(ParameterError, match="type 0 only"):
        mnn.GaugeNet("1x0", "1x1", outputs_at=outputs_at)


def intrinsic_inputs(S: mmp.Surface) -> torch.Tensor:
    """Rigid-motion invariant, gauge-independent scalars: heat kernel signature."""
    return torch.as_tensor(mmp.heat_kernel_signature(S, [0.01, 0.05, 0.2], k=S.n_vertices))


def test_type0_outputs_invariant_to_rigid_motions_and_permutations() -> None:
    torch.manual_seed(1)
    S = DOMAINS["mesh"]()
    net = randomize(mnn.GaugeNet("3x0", "2x0+1x1", width=15, blocks=2)).double()
    ops = mnn.precompute(S, max_type=2, k_eig=S.n_vertices)
    out = net(intrinsic_inputs(S), ops)[:, :2]
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    moved = mmp.Surface(S.vertices @ Q.T + rng.standard_normal(3), S.faces)
    out_m = net(intrinsic_inputs(moved), mnn.precompute(moved, max_type=2, k_eig=S.n_vertices))
    assert torch.allclose(out_m[:, :2], out, atol=1e-9)
    perm = rng.permutation(S.n_vertices)
    inv = np.argsort(perm)
    permuted = mmp.Surface(S.vertices[perm], inv[S.faces])
    out_p = net(intrinsic_inputs(permuted),
                mnn.precompute(permuted, max_type=2, k_eig=S.n_vertices))
    assert torch.allclose(out_p[:, :2], out[perm], atol=1e-9)


def relative_gap(net: mnn.GaugeNet, coarse: mmp.Surface, fine: mmp.Surface, **kw: object
                 ) -> float:
    outs = []
    for S in (coarse, fine):
        ops = mnn.precompute(S, max_type=2, **kw)
        with torch.no_grad():
            outs.append(net(torch.tensor(np.array(S.vertices)), ops))
    a, b = outs[0], outs[1][: coarse.n_vertices]
    return float((a - b).norm() / a.norm())


def test_discretization_robustness_on_refined_spheres() -> None:
    """A random default GaugeNet gives the same type-0 field on icosphere(4) and (5)."""
    torch.manual_seed(0)
    net = mnn.GaugeNet("3x0", "4x0", width=25, blocks=4, method="implicit").double()
    gap = relative_gap(net, mmp.meshes.icosphere(4), mmp.meshes.icosphere(5), k_eig=0)
    assert gap < 0.05
    # and the network is not trivially constant: the output varies over the sphere
    S = mmp.meshes.icosphere(3)
    out = net(torch.tensor(np.array(S.vertices)), mnn.precompute(S, max_type=2, k_eig=0))
    out = out.detach()
    assert float(out.std(0).min()) > 1e-3 * float(out.abs().max())


@pytest.mark.skipif(not FULL, reason="slow (eigenpairs of three types on 10k vertices): set "
                    "MANIFOLDMP_FULL_TESTS=1")
def test_discretization_robustness_spectral() -> None:
    torch.manual_seed(0)
    net = mnn.GaugeNet("3x0", "4x0", width=25, blocks=4).double()
    gap = relative_gap(net, mmp.meshes.icosphere(4), mmp.meshes.icosphere(5), k_eig=128)
    assert gap < 0.05


def test_discretization_robustness_on_a_remeshed_shared_mesh() -> None:
    import trimesh

    S = mmp.Surface.load(shared_mesh("spot.obj"))
    V, F = trimesh.remesh.subdivide(S.vertices, S.faces)
    fine = mmp.Surface(V, F)
    assert np.array_equal(fine.vertices[: S.n_vertices], S.vertices)
    torch.manual_seed(0)
    net = mnn.GaugeNet("3x0", "4x0", width=25, blocks=4, method="implicit").double()
    assert relative_gap(net, S, fine, k_eig=0) < 0.05


def test_gaugenet_trains() -> None:
    """A few Adam steps reduce a regression loss (gradients flow through every block)."""
    torch.manual_seed(0)
    S = mmp.meshes.icosphere(2)
    ops = mnn.precompute(S, max_type=2, k_eig=64)
    x = torch.tensor(np.array(S.vertices))
    target = torch.as_tensor(S.vertices[:, :1] * S.vertices[:, 1:2])
    net = mnn.GaugeNet("3x0", "1x0", width=15, blocks=2).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((net(x, ops) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # gradients reach the times of every type (types 1 and 2 are created from the scalar
    # input inside block 0 by the gradient and the products, so they diffuse in block 1)
    for n in range(3):
        assert float(net.blocks[1].diffusion.raw_time[str(n)].grad.abs().max()) > 0
    for name in ("products.path_weights", "mix1.weights.1", "diffusion.raw_time.0"):
        assert float(net.blocks[0].get_parameter(name).grad.abs().max()) > 0
