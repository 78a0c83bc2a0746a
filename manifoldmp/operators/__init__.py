"""Sparse operators on surfaces and point clouds."""

from manifoldmp.operators.gradient import (
    divergence,
    divergence_matrix,
    gradient,
    gradient_matrix,
)
from manifoldmp.operators.laplacian import bundle_laplacian, connection_laplacian, mass_matrix
from manifoldmp.operators.sparse import complex_to_real_block, to_torch_sparse

__all__ = [
    "bundle_laplacian",
    "complex_to_real_block",
    "connection_laplacian",
    "divergence",
    "divergence_matrix",
    "gradient",
    "gradient_matrix",
    "mass_matrix",
    "to_torch_sparse",
]
