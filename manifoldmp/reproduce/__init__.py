"""Numerical reproduction of the diffusion-to-message-passing derivation (THEORY.md 2-6).

:func:`reproduce` measures every claim of the derivation on one or more meshes and on the
analytic domains (icospheres, flat tori, the cyclic fibre), and writes ``report.md``,
``report.json`` and PNG figures. The ``manifoldmp reproduce`` command is its front end.

Claims, by section:

1. energy: the Dirichlet energy's gradient is the bundle Laplacian (finite differences), it
   decreases along the heat flow, which is its M-gradient flow, and it is gauge-invariant
   (types 0-2, Casimir kappa = 0 and 1);
2. Euler schemes: an explicit step is one round of transported messages; m explicit and m
   implicit steps converge at first order; the explicit stability limit ``tau lambda_max = 2``;
3. Casimir: ``exp(-t(L_n + kappa n^2 M)) = exp(-t kappa n^2) exp(-t M^-1 L_n)``; diffusion on
   the discretized frame bundle (vertices x N orientations) is, after a DFT along the fibre,
   the sum of the type-n flows times ``exp(-t C_N(n))`` with ``C_N(n) -> n^2``;
4. product manifold: the Kronecker-sum spectrum, the diagonal-product identity, the SO(2)
   selection rules of products;
5. analytic truths: sphere spectra and their order, flat / twisted torus spectra, per-face
   holonomy and Gauss-Bonnet, the sphere heat trace, Varadhan's formula (sphere and mesh);
6. gauge equivariance of the message-passing network.

Examples
--------
>>> from manifoldmp.reproduce import Claim
>>> Claim(1, "demo", "mesh", "a claim", "x", measured=1e-14, tolerance=1e-12).passed
True
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from manifoldmp.errors import ParameterError
from manifoldmp.mesh.validate import validate_int
from manifoldmp.reproduce import _claims as C
from manifoldmp.reproduce import _figures as F
from manifoldmp.reproduce._report import Claim, Report
from manifoldmp.surface import Surface

__all__ = ["DEFAULT_MESH", "Claim", "Report", "load_mesh", "normalized", "reproduce"]

logger = logging.getLogger("manifoldmp.reproduce")
DEFAULT_MESH = "genus2"


def load_mesh(spec: str | Surface) -> tuple[str, Surface]:
    """A mesh to reproduce on: a bundled name, a mesh file, or a :class:`Surface`.

    Returns
    -------
    (str, Surface)
        Display name and surface.

    Raises
    ------
    ParameterError
        When ``spec`` is neither a bundled name nor an existing mesh file, or holds no
        triangles (the derivation is checked on triangle meshes).
    """
    from manifoldmp import meshes

    if isinstance(spec, Surface):
        return "surface", spec
    if not isinstance(spec, (str, Path)):
        raise ParameterError(f"a mesh must be a bundled name, a path or a Surface, got {spec!r}")
    if str(spec) in meshes.names():
        return str(spec), meshes.load(str(spec))
    path = Path(spec)
    if not path.is_file():
        raise ParameterError(f"MESH must be a bundled mesh ({', '.join(meshes.names())}) or an "
                             f"existing file, got {str(spec)!r}")
    try:
        return path.stem, Surface.load(path)
    except Exception as exc:
        if "no triangles" in str(exc):
            raise ParameterError(f"{str(spec)!r} has no triangles; reproduce needs a triangle "
                                 "mesh") from exc
        raise


def normalized(S: Surface) -> Surface:
    """``S`` scaled to total area ``4 pi`` (the unit sphere's).

    The Casimir term ``kappa n^2`` has units of inverse area (``lambda_G = 1`` on the unit
    sphere, THEORY.md 2.1), so the claims are measured at the scale where ``kappa = 1`` is the
    frame-bundle reading; every other claim is scale-invariant (times are in units of ``h^2``).
    """
    area = float(S.face_areas.sum())
    if not (np.isfinite(area) and area > 0):
        raise ParameterError(f"the mesh must have a positive finite area to be normalized, "
                             f"got {area!r}")
    scale = float(np.sqrt(4 * np.pi / area))
    if abs(scale - 1.0) < 1e-12:
        return S
    if S.is_embedded:
        return Surface(S.vertices * scale, S.faces)
    return Surface.from_edge_lengths(S.faces, S.halfedge_lengths * scale,
                                     n_vertices=S.n_vertices)


def _run(task: str, fn: Callable[[], tuple[list[Claim], dict[str, Any]]], section: int,
         domain: str) -> tuple[list[Claim], dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        claims, data = fn()
    except Exception as exc:  # a failing check is reported, the others still run
        logger.error("check %s on %s raised:\n%s", task, domain, traceback.format_exc())
        return [Claim(section, task, domain, f"check raised {type(exc).__name__}: {exc}",
                      "-", float("nan"), 0.0)], {}
    for c in claims:
        logger.info("%s %s on %s: %.3g (%s) %.1fs", "pass" if c.passed else "FAIL", c.key,
                    c.domain, c.measured, c.bound, time.perf_counter() - t0)
    return claims, data


def reproduce(meshes: Sequence[str | Path | Surface] | str | Path | Surface | None = None,
              *, quick: bool = False, out: str | Path | None = None,
              progress: bool | None = None, seed: int = 0) -> Report:
    """Measure every claim of the derivation and write the report.

    Parameters
    ----------
    meshes : sequence of str or Surface, optional
        Meshes for the per-mesh claims (bundled names or files); default the bundled
        ``genus2``. Each is scaled to total area ``4 pi`` first (:func:`normalized`).
    quick : bool
        Smaller analytic domains and patches (what CI runs; about a minute on 2 cores with the
        default mesh).
    out : str or Path, optional
        Folder for ``report.md``, ``report.json`` and the PNG figures; nothing is written when
        omitted.
    progress : bool, optional
        tqdm bar over the checks (default: when stderr is a terminal).
    seed : int
        Seed of every random field and gauge.

    Returns
    -------
    Report

    Raises
    ------
    ParameterError
        On an unknown mesh, a file without triangles, a negative seed or an ``out`` that is a
        file.
    """
    from manifoldmp import __version__

    seed = validate_int(seed, "seed", minimum=0)
    if not isinstance(quick, bool):
        raise ParameterError(f"quick must be True or False, got {quick!r}")
    if out is not None:
        if not isinstance(out, (str, Path)):
            raise ParameterError(f"out must be a folder path, got {out!r}")
        if Path(out).exists() and not Path(out).is_dir():
            raise ParameterError(f"out must be a folder, but {str(out)!r} is a file")
    if isinstance(meshes, (str, Path, Surface)):
        meshes = [meshes]
    cases = []
    for spec in meshes or [DEFAULT_MESH]:
        name, S = load_mesh(spec)
        cases.append(C.Case(name, normalized(S), quick=bool(quick), seed=int(seed)))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        for k, c in enumerate(cases):
            c.name = f"{c.name}#{k}"
    out_dir = Path(out) if out is not None else None
    tasks: list[tuple[str, int, str, Callable[[], Any]]] = []
    for c in cases:
        tasks += [
            ("energy", 1, c.name, lambda c=c: C.check_energy(c)),
            ("euler", 2, c.name, lambda c=c: C.check_euler(c)),
            ("casimir", 3, c.name, lambda c=c: C.check_casimir(c)),
            ("product", 4, c.name, lambda c=c: C.check_product(c)),
            ("holonomy", 5, c.name, lambda c=c: C.check_holonomy(c)),
            ("varadhan.mesh", 5, c.name, lambda c=c: C.check_varadhan_mesh(c)),
            ("equivariance", 6, c.name, lambda c=c: C.check_equivariance(c)),
        ]
    tasks += [
        ("casimir.limit", 3, "Z_N fibre", lambda: C.check_casimir_limit(quick)),
        ("sphere", 5, "icospheres", lambda: C.check_sphere_spectra(quick)),
        ("torus", 5, "flat torus", lambda: C.check_flat_torus(quick)),
        ("heat_trace", 5, "icosphere", lambda: C.check_heat_trace(quick)),
        ("varadhan.sphere", 5, "icosphere", lambda: C.check_varadhan_sphere(quick)),
    ]
    t0 = time.perf_counter()
    claims: list[Claim] = []
    data: dict[tuple[str, str], dict[str, Any]] = {}
    bar = tqdm(tasks, desc="reproduce", unit="check", leave=False,
               disable=None if progress is None else not progress)  # None: only on a tty
    for task, section, domain, fn in bar:
        bar.set_postfix_str(f"{task} on {domain}")
        cl, d = _run(task, fn, section, domain)
        claims += cl
        data[(task, domain)] = d
    claims.sort(key=lambda c: c.section)
    report = Report(claims=claims, meshes=[c.name for c in cases], quick=bool(quick),
                    version=__version__)
    if out_dir is not None:
        report.figures = _figures(out_dir, cases, data)
    report.seconds = time.perf_counter() - t0
    if out_dir is not None:
        report.write(out_dir)
    return report


def _figures(out: Path, cases: list[C.Case],
             data: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    figs: dict[str, str] = {}

    def add(title: str, draw: Callable[[], str]) -> None:
        try:
            figs[title] = draw()
        except Exception:  # a figure that cannot be drawn must not lose the report
            logger.error("figure %r failed:\n%s", title, traceback.format_exc())

    for c in cases:
        slug = "".join(ch if ch.isalnum() else "_" for ch in c.name)
        if d := data.get(("euler", c.name)):
            add(f"Euler convergence ({c.name})", lambda d=d, c=c, s=slug: F.plot_convergence(
                d, c.name, out / f"convergence_{s}.png"))
            add(f"explicit stability limit ({c.name})", lambda d=d, c=c, s=slug: F.plot_stability(
                d, c.name, out / f"stability_{s}.png"))
        if d := data.get(("energy", c.name)):
            add(f"energy along the heat flow ({c.name})",
                lambda d=d, c=c, s=slug: F.plot_energy(d, c.name, out / f"energy_{s}.png"))
        if c.surface.is_embedded:
            add(f"heat kernel and transported vectors ({c.name})",
                lambda c=c, s=slug: F.plot_field(c.surface, c.name, out / f"field_{s}.png"))
    if d := data.get(("sphere", "icospheres")):
        add("sphere spectra", lambda d=d: F.plot_sphere_spectra(d, out / "sphere_spectra.png"))
    if d := data.get(("casimir.limit", "Z_N fibre")):
        add("discrete Casimir", lambda d=d: F.plot_casimir_limit(d, out / "casimir_limit.png"))
    if d := data.get(("heat_trace", "icosphere")):
        add("sphere heat trace", lambda d=d: F.plot_heat_trace(d, out / "heat_trace.png"))
    if d := data.get(("varadhan.sphere", "icosphere")):
        add("Varadhan on the sphere", lambda d=d: F.plot_varadhan(d, out / "varadhan.png"))
    return figs
