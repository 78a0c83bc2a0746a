"""FieldType: parsing, layout, representation and gauge action."""

from __future__ import annotations

import math

import pytest
import torch

from manifoldmp.errors import ParameterError
from manifoldmp.nn import FieldType


def test_parse_repr_roundtrip_and_dim() -> None:
    ft = FieldType("8x0 + 4x1+2x2")
    assert ft.dim == 8 + 2 * 4 + 2 * 2 == 20
    assert str(ft) == "8x0+4x1+2x2"
    assert FieldType(str(ft)) == ft == FieldType([(8, 0), (4, 1), (2, 2)])
    assert eval(repr(ft)) == ft
    assert hash(ft) == hash(FieldType("8x0+4x1+2x2"))
    assert len({ft, FieldType(str(ft))}) == 1
    assert [(s.start, s.stop) for s in ft.slices()] == [(0, 8), (8, 16), (16, 20)]
    with pytest.raises(AttributeError):
        ft.foo = 1  # type: ignore[attr-defined]


def test_simplify_and_multiplicities() -> None:
    ft = FieldType("2x1+3x0+1x1")
    assert ft.simplify() == FieldType("3x0+3x1")
    assert ft.multiplicity(1) == 3 and ft.max_type == 1 and not ft.is_simple


@pytest.mark.parametrize("bad", ["3y0", "x1", "2x-1", "2x1+", [(1, -2)], 5])
def test_bad_specs_raise(bad: object) -> None:
    with pytest.raises(ParameterError):
        FieldType(bad)


def test_rep_is_a_representation() -> None:
    ft = FieldType("2x0+1x1+2x3")
    a, b = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-2.1, dtype=torch.float64)
    Ra, Rb = ft.rep(a), ft.rep(b)
    assert torch.allclose(Ra @ Rb, ft.rep(a + b), atol=1e-14)
    assert torch.allclose(ft.rep(-a), Ra.T, atol=1e-14)
    assert torch.allclose(ft.rep(2 * math.pi), torch.eye(ft.dim, dtype=torch.float64), atol=1e-13)
    assert ft.rep(torch.zeros(5)).shape == (5, ft.dim, ft.dim)


def test_split_merge_and_transform_match_complex_phases() -> None:
    ft = FieldType("2x0+1x2+3x1+1x0")
    g = torch.Generator().manual_seed(0)
    x = ft.random(7, generator=g)
    parts = ft.split(x)
    assert set(parts) == {0, 1, 2} and parts[1].is_complex() and parts[1].shape == (7, 3)
    assert torch.equal(ft.merge(parts), x)
    alpha = torch.rand(7, generator=g, dtype=torch.float64) * 6.3
    y = ft.split(ft.transform(x, alpha))
    for n, z in parts.items():
        want = z if n == 0 else torch.exp(-1j * n * alpha)[:, None] * z
        assert torch.allclose(y[n], want, atol=1e-15)
    # transform equals rep(-alpha) per vertex
    R = ft.rep(-alpha)
    assert torch.allclose(ft.transform(x, alpha), torch.einsum("vij,vj->vi", R, x), atol=1e-14)


def test_check_rejects_wrong_layout() -> None:
    ft = FieldType("1x0+1x1")
    with pytest.raises(ParameterError, match="last dimension 3"):
        ft.check(torch.zeros(4, 2))
    with pytest.raises(ParameterError, match="real floating"):
        ft.check(torch.zeros(4, 3, dtype=torch.complex128))
    with pytest.raises(ParameterError, match="one angle per vertex"):
        ft.transform(torch.zeros(4, 3), torch.zeros(5))
