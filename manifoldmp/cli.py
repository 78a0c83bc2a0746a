"""The ``manifoldmp`` command line.

``manifoldmp reproduce [MESH ...] [--quick] [--out DIR]`` reproduces the derivation from
bundle diffusion to message passing numerically (THEORY.md 2-6): it measures every claim on the
meshes (default: the bundled ``genus2``) and on the analytic domains, prints a table (claim,
formula, measured, tolerance, pass/fail) and writes ``DIR/report.md``, ``DIR/report.json`` and
PNG figures. The exit status is 1 when a claim fails.

``manifoldmp [report] [MESH] [--max-type N] [-k K] [--json FILE]`` prints a report on a mesh
(a bundled name such as ``genus2``, the default, or any file trimesh reads; point clouds too):
size, components, boundary loops, Euler characteristic, genus, repairs, total holonomy, the
lowest generalized eigenvalues of ``(L_n, M)`` for every type ``n`` and the build times.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
from tqdm.auto import tqdm

import manifoldmp as mmp

__all__ = ["main", "mesh_report"]

logger = logging.getLogger("manifoldmp.cli")
COMMANDS = ("report", "reproduce")


def _load_domain(spec: str) -> tuple[Any, float]:
    t0 = time.perf_counter()
    if spec in mmp.meshes.names():
        dom: Any = mmp.meshes.load(spec)
    else:
        path = Path(spec)
        if not path.exists():
            raise mmp.ParameterError(
                f"MESH must be a bundled mesh ({', '.join(mmp.meshes.names())}) or an existing "
                f"file, got {spec!r}"
            )
        try:
            dom = mmp.Surface.load(path)
        except mmp.MeshError as exc:
            if "no triangles" not in str(exc):
                raise
            dom = mmp.PointCloud.load(path)
    return dom, time.perf_counter() - t0


def mesh_report(domain: Any, *, max_type: int = 3, k: int = 8,
                progress: bool = True) -> dict[str, Any]:
    """Compute the report of the ``manifoldmp report`` command as a dictionary.

    Parameters
    ----------
    domain : Surface or PointCloud
    max_type : int
        Types ``n = 0 .. max_type`` get their lowest eigenvalues.
    k : int
        Number of eigenvalues per type.
    progress : bool
        Show a tqdm bar over the types.

    Returns
    -------
    dict
        JSON-serializable report.
    """
    max_type = mmp.mesh.validate.validate_int(max_type, "max_type", minimum=0)
    k = mmp.mesh.validate.validate_int(k, "k", minimum=1)
    rep: dict[str, Any] = {"vertices": domain.n_vertices}
    is_mesh = isinstance(domain, mmp.Surface)
    if is_mesh:
        S = domain
        rep.update(
            faces=S.n_faces, edges=S.n_edges, components=S.n_components,
            boundary_loops=S.n_boundary_loops, euler_characteristic=S.euler_characteristic,
            genus=S.genus, area=float(S.face_areas.sum()),
            mean_edge_length=S.mean_edge_length,
            total_holonomy_over_2pi=float(S.face_holonomy.sum() / (2 * np.pi)),
            angle_defects_over_2pi=float(S.angle_defects.sum() / (2 * np.pi)),
            repairs={key: v for key, v in S.repairs.items() if v},
            mollified_by=S.mollified_by,
        )
    M = mmp.mass_matrix(domain)
    area = float(M.diagonal().sum())
    rep["eigenvalues"], rep["times_s"] = {}, {}
    kk = min(k, domain.n_vertices - 2)
    for n in tqdm(range(max_type + 1), desc="types", disable=not progress, leave=False):
        t0 = time.perf_counter()
        L = mmp.connection_laplacian(domain, n)
        t1 = time.perf_counter()
        ev = sla.eigsh(L, k=kk, M=M, sigma=-1.0 / area, which="LM",
                       v0=np.ones(domain.n_vertices))[0]
        t2 = time.perf_counter()
        rep["eigenvalues"][n] = np.sort(ev).tolist()
        rep["times_s"][f"connection_laplacian_n{n}"] = t1 - t0
        rep["times_s"][f"eigsh_n{n}"] = t2 - t1
        logger.info("type %d: operator %.3fs, eigenvalues %.3fs", n, t1 - t0, t2 - t1)
    return rep


def _print_report(name: str, rep: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(f"manifoldmp {mmp.__version__} report: {name}\n")
    keys = ["vertices", "faces", "edges", "components", "boundary_loops", "euler_characteristic",
            "genus", "area", "mean_edge_length", "total_holonomy_over_2pi",
            "angle_defects_over_2pi", "mollified_by", "repairs"]
    for key in keys:
        if key in rep:
            val = rep[key]
            txt = f"{val:.10g}" if isinstance(val, float) else str(val)
            out.write(f"  {key:<26} {txt}\n")
    out.write("  lowest eigenvalues of L_n u = lambda M u:\n")
    for n, ev in rep["eigenvalues"].items():
        out.write(f"    n={n}: " + " ".join(f"{e:.5g}" for e in ev) + "\n")
    out.write("  build times (s):\n")
    for key, val in rep["times_s"].items():
        out.write(f"    {key:<28} {val:.4f}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``manifoldmp`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["report", *argv]
    parser = argparse.ArgumentParser(prog="manifoldmp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report", help="geometry, topology and spectra of a mesh")
    rp.add_argument("mesh", nargs="?", default="genus2",
                    help="bundled mesh name or a mesh file (default: genus2)")
    rp.add_argument("--max-type", type=int, default=3, help="largest type n (default 3)")
    rp.add_argument("-k", type=int, default=8, help="eigenvalues per type (default 8)")
    rp.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    rp.add_argument("-v", "--verbose", action="store_true", help="log progress")
    rr = sub.add_parser("reproduce", help="reproduce the diffusion-to-message-passing "
                        "derivation numerically (report, JSON and figures)")
    rr.add_argument("meshes", nargs="*", metavar="MESH",
                    help="bundled mesh names or mesh files (default: genus2)")
    rr.add_argument("--quick", action="store_true",
                    help="smaller analytic domains and patches (under 2 minutes; what CI runs)")
    rr.add_argument("--out", type=Path, default=Path("reproduce-report"),
                    help="folder for report.md, report.json and figures "
                         "(default: reproduce-report)")
    rr.add_argument("--seed", type=int, default=0, help="seed of random fields and gauges")
    rr.add_argument("-v", "--verbose", action="store_true", help="log each claim")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "reproduce":
        return _reproduce(parser, args)
    try:
        dom, t_load = _load_domain(args.mesh)
        t0 = time.perf_counter()
        if isinstance(dom, mmp.Surface):
            dom.transport_angles  # noqa: B018 - force the geometry build for timing
        t_geo = time.perf_counter() - t0
        rep = mesh_report(dom, max_type=args.max_type, k=args.k,
                          progress=sys.stderr.isatty())
    except (mmp.ManifoldmpError, FileNotFoundError) as exc:
        parser.exit(2, f"manifoldmp: error: {exc}\n")
    rep["times_s"] = {"load_and_clean": t_load, "geometry": t_geo, **rep["times_s"]}
    _print_report(args.mesh, rep)
    if args.json is not None:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


def _reproduce(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from manifoldmp.reproduce import reproduce

    try:
        rep = reproduce(args.meshes or None, quick=args.quick, out=args.out, seed=args.seed)
    except (mmp.ManifoldmpError, FileNotFoundError) as exc:
        parser.exit(2, f"manifoldmp: error: {exc}\n")
    sys.stdout.write(rep.table() + "\n")
    sys.stdout.write(f"report: {args.out / 'report.md'}, {args.out / 'report.json'}, "
                     f"{len(rep.figures)} figures in {args.out}\n")
    return 0 if rep.passed else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
