"""manifoldmp: bundle diffusion operators and gauge-equivariant message passing on surfaces."""

from manifoldmp import mesh, meshes, nn, spectral, testing
from manifoldmp.errors import ManifoldmpError, MeshError, ParameterError
from manifoldmp.geometry.delaunay import intrinsic_delaunay
from manifoldmp.operators import (
    bundle_laplacian,
    complex_to_real_block,
    connection_laplacian,
    divergence,
    divergence_matrix,
    gradient,
    gradient_matrix,
    mass_matrix,
    to_torch_sparse,
)
from manifoldmp.pointcloud import PointCloud
from manifoldmp.spectral import (
    EigenSolverError,
    GeodesicSolver,
    HeatKernel,
    generalized_eigsh,
    heat_diffuse,
    heat_kernel_signature,
    heat_method_distance,
)
from manifoldmp.surface import Surface

__version__ = "0.1.0"

__all__ = [
    "EigenSolverError",
    "GeodesicSolver",
    "HeatKernel",
    "ManifoldmpError",
    "MeshError",
    "ParameterError",
    "PointCloud",
    "Surface",
    "__version__",
    "bundle_laplacian",
    "complex_to_real_block",
    "connection_laplacian",
    "divergence",
    "divergence_matrix",
    "generalized_eigsh",
    "gradient",
    "gradient_matrix",
    "heat_diffuse",
    "heat_kernel_signature",
    "heat_method_distance",
    "intrinsic_delaunay",
    "mass_matrix",
    "mesh",
    "meshes",
    "nn",
    "spectral",
    "testing",
    "to_torch_sparse",
]
