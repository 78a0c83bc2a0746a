"""Heat-method distance, vector heat transport and log map against potpourri3d.

potpourri3d (geometry-central's C++ solvers) runs in this process on the same arrays with the
same time step (``t = h^2``, ``h`` the mean edge length). Four cases:

* ``mesh``: a clean mesh (icosphere, 164k vertices by default), both on the input
  triangulation (``use_robust=False``; ours with geometry-central's Poisson shift, so the
  distances agree to rounding, printed);
* ``robust``: a badly shaped mesh (the shared Loop-subdivided koala, 200k vertices, 75k negative
  cotan weights), both on the intrinsic Delaunay triangulation (``use_robust=True`` /
  ``intrinsic_delaunay=True``);
* ``vector``: transport and log map on the input triangulation of a smaller icosphere (the
  log map of potpourri3d takes minutes at 164k);
* ``cloud``: a raw range scan point cloud (the shared bunny scan, 40k points).

"build" is the solver's construction plus its first query (the factorizations of both happen
lazily or eagerly; the sum is what a user waits for); "query" is the best of three further
queries from other sources. Usage: ``python benchmarks/bench_geodesics.py [--levels 7 5]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import potpourri3d as pp3d
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json

import manifoldmp as mmp

SHARED = Path(__file__).resolve().parents[2] / "shared" / "meshes"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best(fn, repeat: int = 3) -> float:
    return min(timed(fn)[0] for _ in range(repeat))


def row(rows: list, task: str, ours: float, theirs: float, note: str = "") -> None:
    rows.append({"task": task, "manifoldmp_s": ours, "potpourri3d_s": theirs,
                 "ratio": theirs / ours, "note": note})
    print(f"{task:44s} ours {ours:8.3f} s   potpourri3d {theirs:8.3f} s   "
          f"ratio {theirs / ours:6.2f}x  {note}", flush=True)


def distance_case(rows: list, name: str, V: np.ndarray, F: np.ndarray, robust: bool) -> None:
    S = mmp.Surface(V, F)
    srcs = [11, 1234 % len(V), 4321 % len(V)]
    t_ours, (G, d) = timed(lambda: (lambda g: (g, g.distance(0)))(
        mmp.GeodesicSolver(S, poisson_shift=1e-6, intrinsic_delaunay=robust)))
    t_pp, (P, e) = timed(lambda: (lambda p: (p, p.compute_distance(0)))(
        pp3d.MeshHeatMethodDistanceSolver(V, F, t_coef=1.0, use_robust=robust)))
    diff = float(np.max(np.abs(d - e)) / np.max(e))
    row(rows, f"{name}: distance, build + first query", t_ours, t_pp,
        f"max |ours - theirs| / max = {diff:.1e}")
    q_ours = min(best(lambda s=s: G.distance(s), 1) for s in srcs)
    q_pp = min(best(lambda s=s: P.compute_distance(s), 1) for s in srcs)
    row(rows, f"{name}: distance, one more query", q_ours, q_pp)


def vector_case(rows: list, name: str, V: np.ndarray, F: np.ndarray) -> None:
    S = mmp.Surface(V, F)
    t_ours, G = timed(lambda: (lambda g: (g.transport(0, 1.0 + 0.5j), g)[1])(
        mmp.GeodesicSolver(S)))
    t_pp, P = timed(lambda: (lambda p: (p.transport_tangent_vector(0, [1.0, 0.5]), p)[1])(
        pp3d.MeshVectorHeatSolver(V, F, t_coef=1.0, use_intrinsic_delaunay=False)))
    row(rows, f"{name}: transport, build + first query", t_ours, t_pp)
    row(rows, f"{name}: transport, one more query", best(lambda: G.transport(17, 1.0 + 0.5j)),
        best(lambda: P.transport_tangent_vector(17, [1.0, 0.5])))
    log_maps(rows, name, lambda s: G.log_map(s), lambda s: P.compute_log_map(s))


def log_maps(rows: list, name: str, ours, theirs) -> None:
    """First call (potpourri3d factors an extra system there), then the best of three more."""
    row(rows, f"{name}: log map, first call", timed(lambda: ours(17))[0],
        timed(lambda: theirs(17))[0])
    row(rows, f"{name}: log map, one more call",
        min(best(lambda s=s: ours(s), 1) for s in (18, 19, 20)),
        min(best(lambda s=s: theirs(s), 1) for s in (18, 19, 20)))


def cloud_case(rows: list, name: str, P: np.ndarray) -> None:
    t_ours, (G, d) = timed(lambda: (lambda g: (g, g.distance(0)))(
        mmp.GeodesicSolver(mmp.PointCloud(P))))
    t_pp, (H, e) = timed(lambda: (lambda h: (h, h.compute_distance(0)))(
        pp3d.PointCloudHeatSolver(P, t_coef=1.0)))
    fin = np.isfinite(d) & np.isfinite(e)
    rel = float(np.median(np.abs(d[fin] - e[fin]) / np.maximum(e[fin], 1e-12)))
    row(rows, f"{name}: distance, build + first query", t_ours, t_pp,
        f"median relative difference {rel:.1e} (different Laplacians)")
    row(rows, f"{name}: distance, one more query", best(lambda: G.distance(17)),
        best(lambda: H.compute_distance(17)))
    row(rows, f"{name}: transport, one more query", best(lambda: G.transport(17, 1.0 + 0.5j)),
        best(lambda: H.transport_tangent_vector(17, [1.0, 0.5])))
    log_maps(rows, name, lambda s: G.log_map(s), lambda s: H.compute_log_map(s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, nargs=2, default=[7, 5],
                    help="icosphere levels of the distance and the vector cases")
    ap.add_argument("--skip", nargs="*", default=[], choices=["mesh", "robust", "vector", "cloud"])
    args = ap.parse_args()
    print(machine())
    rows: list = []
    if "mesh" not in args.skip:
        S = mmp.meshes.icosphere(args.levels[0])
        distance_case(rows, f"icosphere({args.levels[0]}) V={S.n_vertices}",
                      np.asarray(S.vertices), np.asarray(S.faces), robust=False)
    if "robust" not in args.skip:
        path = SHARED / "koala_loop200k.ply"
        if path.exists():
            m = trimesh.load(path, process=False)
            distance_case(rows, f"koala V={len(m.vertices)}, intrinsic Delaunay",
                          np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces),
                          robust=True)
        else:
            print(f"skipped the robust case: {path.name} not found beside the project")
    if "vector" not in args.skip:
        S = mmp.meshes.icosphere(args.levels[1])
        vector_case(rows, f"icosphere({args.levels[1]}) V={S.n_vertices}",
                    np.asarray(S.vertices), np.asarray(S.faces))
    if "cloud" not in args.skip:
        path = SHARED / "bun000_scan.ply"
        if path.exists():
            P = np.asarray(trimesh.load(path).vertices, dtype=np.float64)
            cloud_case(rows, f"bunny scan N={len(P)}", P)
        else:
            print(f"skipped the cloud case: {path.name} not found beside the project")
    print("results:", write_json("bench_geodesics", {"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
