"""Eigenpairs, heat semigroups (spectral, Krylov, implicit) and their applications."""

from manifoldmp.spectral.chebyshev import ChebyshevNotConverged, chebyshev_expm
from manifoldmp.spectral.descriptors import heat_kernel_signature, heat_trace
from manifoldmp.spectral.eigen import EigenResult, EigenSolverError, generalized_eigsh
from manifoldmp.spectral.geodesics import (
    GeodesicSolver,
    heat_method_distance,
    log_map,
    transport_tangent_vector,
    varadhan_distance,
)
from manifoldmp.spectral.heat import HeatKernel, heat_diffuse
from manifoldmp.spectral.krylov import KrylovNotConverged, lanczos_expm

__all__ = [
    "ChebyshevNotConverged",
    "EigenResult",
    "EigenSolverError",
    "GeodesicSolver",
    "HeatKernel",
    "KrylovNotConverged",
    "chebyshev_expm",
    "generalized_eigsh",
    "heat_diffuse",
    "heat_kernel_signature",
    "heat_method_distance",
    "heat_trace",
    "lanczos_expm",
    "log_map",
    "transport_tangent_vector",
    "varadhan_distance",
]
