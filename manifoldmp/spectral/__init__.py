"""Eigenpairs, heat semigroups (spectral, Krylov, implicit) and their applications."""

from manifoldmp.spectral.eigen import EigenResult, EigenSolverError, generalized_eigsh
from manifoldmp.spectral.heat import HeatKernel, heat_diffuse
from manifoldmp.spectral.krylov import KrylovNotConverged, lanczos_expm

__all__ = [
    "EigenResult",
    "EigenSolverError",
    "HeatKernel",
    "KrylovNotConverged",
    "generalized_eigsh",
    "heat_diffuse",
    "lanczos_expm",
]
