"""Shared fixtures: tolerances, the shared real-mesh corpus, seeded generators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MESHES = Path(os.environ.get("MANIFOLDMP_SHARED_MESHES", ROOT.parent / "shared" / "meshes"))

TOL = {np.float64: 1e-12, np.float32: 1e-4}

CLOSED_SHARED = ["nut.ply", "ant.ply", "spot.obj", "blub.obj", "armadillo.obj", "boot.obj",
                 "nefertiti_lowres.obj", "koala_loop200k.ply"]
DEFECTIVE_SHARED = ["airplane.ply", "teapot.obj", "face_rangescan.ply", "stanford_bunny.obj",
                    "ant.ply"]
ALL_SHARED_MESHES = sorted(set(CLOSED_SHARED + DEFECTIVE_SHARED + ["mountain.obj"]))


def shared_mesh(name: str) -> Path:
    path = SHARED_MESHES / name
    if not path.exists():
        pytest.skip(f"shared mesh corpus not found ({name} missing next to the repository)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
