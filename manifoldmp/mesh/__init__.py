"""Connectivity, validation and repair of triangle meshes."""
