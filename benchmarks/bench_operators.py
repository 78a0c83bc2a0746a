"""Build time of the type-1 connection Laplacian against potpourri3d and robust-laplacian.

Every competitor runs in this process on the same arrays; times are the best of ``--repeat``
runs after one warm-up, each from a fresh ``Surface`` (so connectivity cleaning, geometry and
assembly are all inside the timing). Peak memory is measured in a fresh child process per
method. Usage: ``python benchmarks/bench_operators.py [--subdivisions 8] [--points 100000]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import potpourri3d as pp3d
import robust_laplacian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, machine, peak_memory_mib, write_json

import manifoldmp as mmp
from manifoldmp.meshes import _icosphere_arrays


def mesh_arrays(sub: int = 8):
    return _icosphere_arrays(sub)


def cloud_points(n: int = 100_000):
    p = np.random.default_rng(0).normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def ours_conn1(arrs):
    return mmp.connection_laplacian(mmp.Surface(*arrs), 1)


def ours_cotan(arrs):
    return mmp.connection_laplacian(mmp.Surface(*arrs), 0)


def pp3d_cotan(arrs):
    return pp3d.cotan_laplacian(*arrs)


def pp3d_conn(arrs):
    return pp3d.MeshVectorHeatSolver(*arrs, use_intrinsic_delaunay=False).get_connection_laplacian()


def rl_mesh(arrs):
    return robust_laplacian.mesh_laplacian(*arrs)


def ours_cloud(p):
    P = mmp.PointCloud(p)
    return mmp.connection_laplacian(P, 1), mmp.mass_matrix(P)


def rl_cloud(p):
    return robust_laplacian.point_cloud_laplacian(p, mollify_factor=1e-5, n_neighbors=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subdivisions", type=int, default=8)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()

    arrs = mesh_arrays(args.subdivisions)
    pts = cloud_points(args.points)
    print(f"machine: {machine()}")
    print(f"mesh: icosphere({args.subdivisions}), V={len(arrs[0])}, F={len(arrs[1])}; "
          f"cloud: {args.points} points on the unit sphere")
    r = args.repeat
    t = {
        "manifoldmp connection_laplacian(Surface(V,F), 1)": best_time(lambda: ours_conn1(arrs), r),
        "manifoldmp connection_laplacian(Surface(V,F), 0)": best_time(lambda: ours_cotan(arrs), r),
        "potpourri3d cotan_laplacian": best_time(lambda: pp3d_cotan(arrs), r),
        "potpourri3d MeshVectorHeatSolver.get_connection_laplacian": best_time(
            lambda: pp3d_conn(arrs), max(1, r - 1)),
        "robust_laplacian mesh_laplacian": best_time(lambda: rl_mesh(arrs), 1),
        "manifoldmp PointCloud + connection_laplacian(P, 1)": best_time(lambda: ours_cloud(pts), 1),
        "robust_laplacian point_cloud_laplacian": best_time(lambda: rl_cloud(pts), 1),
    }
    ours = t["manifoldmp connection_laplacian(Surface(V,F), 1)"]
    ratios = {
        "ours(n=1) / potpourri3d cotan_laplacian": ours / t["potpourri3d cotan_laplacian"],
        "ours(n=1) / potpourri3d connection Laplacian":
            ours / t["potpourri3d MeshVectorHeatSolver.get_connection_laplacian"],
        "ours(n=1) / robust_laplacian mesh_laplacian": ours / t["robust_laplacian mesh_laplacian"],
        "ours point cloud (n=1) / robust_laplacian point_cloud_laplacian":
            t["manifoldmp PointCloud + connection_laplacian(P, 1)"]
            / t["robust_laplacian point_cloud_laplacian"],
    }
    for k, v in t.items():
        print(f"  {k:<62} {v:8.3f} s")
    for k, v in ratios.items():
        print(f"  ratio {k:<58} {v:8.3f}")
    mem = {}
    if not args.no_memory:
        for name, fn, setup in [("ours mesh n=1", ours_conn1, mesh_arrays),
                                ("potpourri3d cotan", pp3d_cotan, mesh_arrays),
                                ("robust_laplacian mesh", rl_mesh, mesh_arrays),
                                ("ours point cloud n=1", ours_cloud, cloud_points),
                                ("robust_laplacian point cloud", rl_cloud, cloud_points)]:
            mem[name] = peak_memory_mib(fn, setup)
            print(f"  peak memory {name:<40} {mem[name]:8.0f} MiB")
    path = write_json("operators", {"machine": machine(), "times_s": t, "ratios": ratios,
                                    "peak_memory_mib": mem})
    print(f"written {path}")


if __name__ == "__main__":
    main()
