"""Gauge-equivariant layers and networks on bundle operators (torch).

Features are real ``(V, D)`` tensors laid out by a :class:`FieldType`; every layer takes them
together with an :class:`~manifoldmp.operators.bundle.OperatorBundle` from :func:`precompute`.
"""

from manifoldmp.nn.field_type import FieldType
from manifoldmp.nn.functional import HEAT_METHODS, SolverNotConverged, heat_flow
from manifoldmp.nn.layers import (
    AnisotropicConv,
    BundleDiffusion,
    Curl,
    Divergence,
    GatedNonlinearity,
    GaugeLinear,
    GaugeModule,
    Gradient,
    NormNonlinearity,
    ProductBasis,
    RegularNonlinearity,
    TypeProduct,
    global_pool,
    invariants,
    to_faces,
)
from manifoldmp.nn.net import GaugeBlock, GaugeNet
from manifoldmp.operators.bundle import OperatorBundle, precompute

__all__ = [
    "HEAT_METHODS",
    "AnisotropicConv",
    "BundleDiffusion",
    "Curl",
    "Divergence",
    "FieldType",
    "GatedNonlinearity",
    "GaugeBlock",
    "GaugeLinear",
    "GaugeModule",
    "GaugeNet",
    "Gradient",
    "NormNonlinearity",
    "OperatorBundle",
    "ProductBasis",
    "RegularNonlinearity",
    "SolverNotConverged",
    "TypeProduct",
    "global_pool",
    "heat_flow",
    "invariants",
    "precompute",
    "to_faces",
]
