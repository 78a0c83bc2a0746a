"""Figures of ``manifoldmp reproduce``: matplotlib (Agg) plots of the measured data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_casimir_limit", "plot_convergence", "plot_energy", "plot_field",
           "plot_heat_trace", "plot_sphere_spectra", "plot_stability", "plot_varadhan"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path.name


def _axes() -> tuple[Any, Any]:
    return _plt().subplots(figsize=(5.5, 3.8))


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str,
            legend_size: int = 8) -> str:
    """Label, add the legend and save (the tail every line plot shares)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    return _save(fig, path)


def plot_energy(data: dict[str, Any], mesh: str, path: Path) -> str:
    """Energy ``E(t) / E(0)`` along the exact heat flow, one curve per (type, kappa)."""
    fig, ax = _axes()
    for label, (t, e) in data["energy_curves"].items():
        ax.semilogy(t, e, label=label)
    return _finish(fig, ax, path, "t / h^2", "E(t) / E(0)",
                   f"Dirichlet energy along the bundle heat flow ({mesh})")


def plot_convergence(data: dict[str, Any], mesh: str, path: Path) -> str:
    """Log-log error of m explicit / implicit Euler steps against the exact semigroup."""
    fig, ax = _axes()
    for n, c in data["convergence"].items():
        for kind, mark in (("explicit", "o-"), ("implicit", "s--")):
            tau, err = np.array(c[f"tau_{kind}"]), np.array(c[f"err_{kind}"])
            ax.loglog(tau, err, mark, label=f"{kind}, type {n}")
    c = data["convergence"][1]
    tau = np.array(c["tau_implicit"])
    ref = np.array(c["err_implicit"])[-1] * tau / tau[-1]
    ax.loglog(tau, ref, "k:", label="slope 1")
    return _finish(fig, ax, path, "time step tau", "relative M-norm error",
                   f"Euler steps -> exact heat semigroup ({mesh})")


def plot_stability(data: dict[str, Any], mesh: str, path: Path) -> str:
    """Norm of explicit Euler iterates just below and just above ``tau lambda_max = 2``."""
    fig, ax = _axes()
    for label, norms in data["stability"].items():
        ax.semilogy(norms, label=label)
    return _finish(fig, ax, path, "explicit step", "|u_k|_M / |u_0|_M",
                   f"explicit Euler stability limit ({mesh})")


def plot_sphere_spectra(data: dict[str, Any], path: Path) -> str:
    """Icosphere spectra of ``L_n`` (finest level) against ``l(l+1) - n^2``, and errors vs h."""
    plt = _plt()
    sd = data["sphere_spectra"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    lev = sd["levels"][-1]
    for n in range(4):
        lam = sd["spectra"][f"level {lev}, n={n}"]
        a1.plot(np.arange(len(lam)), lam, "o", ms=4, label=f"n={n} discrete")
        a1.plot(np.arange(len(lam)), sd["reference"][n], "k_", ms=10)
    a1.set_xlabel("index")
    a1.set_ylabel("eigenvalue")
    a1.set_title(f"icosphere({lev}) vs l(l+1) - n^2 (bars)")
    a1.legend(fontsize=7)
    h = np.array(sd["h"])
    for n in range(4):
        a2.loglog(h, sd["errors"][n], "o-", label=f"n={n}")
    a2.loglog(h, sd["errors"][0][-1] * (h / h[-1]) ** 2, "k:", label="slope 2")
    a2.set_xlabel("mean edge length h")
    a2.set_ylabel("max relative error")
    a2.set_title("convergence of the sphere spectra")
    a2.legend(fontsize=7)
    return _save(fig, path)


def plot_casimir_limit(data: dict[str, Any], path: Path) -> str:
    """Relative error of the cyclic-group Casimir ``C_N(n)`` against ``n^2``."""
    cd = data["casimir_limit"]
    fig, ax = _axes()
    N = np.array(cd["N"])
    for n, r in cd["rel"].items():
        ax.loglog(N, r, "o-", label=f"n={n}")
    ax.loglog(N, cd["rel"][1][0] * (N / N[0]) ** -2.0, "k:", label="slope -2")
    return _finish(fig, ax, path, "orientations N", "|C_N(n) - n^2| / n^2",
                   "discrete Casimir of Z_N -> n^2")


def plot_heat_trace(data: dict[str, Any], path: Path) -> str:
    """``Tr e^{-tA_n} - 1/t`` of the icosphere, the exact series and the two-term asymptotics."""
    fig, ax = _axes()
    for n, d in data["heat_trace"].items():
        t = np.array(d["t"])
        ax.plot(t, np.array(d["discrete"]) - 1 / t, "o", ms=4, label=f"n={n} discrete")
        ax.plot(t, np.array(d["exact"]) - 1 / t, "-", label=f"n={n} exact series")
        ax.plot(t, np.array(d["asymptotic"]) - 1 / t, ":", color="gray")
    return _finish(fig, ax, path, "t", "Tr exp(-t A_n) - A/(4 pi t)",
                   "heat trace of the unit sphere (dotted: 1/3 + (1/15 - n^2/6) t)", 7)


def plot_varadhan(data: dict[str, Any], path: Path) -> str:
    """Varadhan distance estimate against the exact distance."""
    plt = _plt()
    vd = data["varadhan"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    d, e = np.array(vd["exact"]), np.array(vd["estimate"])
    ax.plot(d, e, ".", ms=3)
    ax.plot([d.min(), d.max()], [d.min(), d.max()], "k:")
    ax.set_xlabel("great-circle distance")
    ax.set_ylabel("sqrt(-4t log(4 pi t k_t))")
    ax.set_title(f"Varadhan's formula ({vd['domain']})")
    return _save(fig, path)


def plot_field(S: Any, mesh: str, path: Path, *, t_over_h2: float = 200.0) -> str:
    """Heat kernel (colour) and the heat-transported tangent vector (arrows) on the surface."""
    import torch

    from manifoldmp.nn.functional import heat_flow
    from manifoldmp.operators.bundle import precompute
    from manifoldmp.reproduce._claims import source_vertex

    plt = _plt()
    V = S.n_vertices
    ops = precompute(S, max_type=1, k_eig=0, progress=False)
    t = torch.tensor([t_over_h2 * S.mean_edge_length ** 2], dtype=torch.float64)
    delta = torch.zeros(V, 1, dtype=torch.float64)
    delta[source_vertex(S)] = 1.0
    k = heat_flow(ops, 0, delta, t, method="krylov").numpy()[:, 0]
    z = heat_flow(ops, 1, delta.to(torch.complex128), t, method="krylov").numpy()[:, 0]
    fr = S.frames
    vec = z.real[:, None] * fr[:, 0] + z.imag[:, None] * fr[:, 1]
    from matplotlib import colormaps
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    p = S.vertices
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    ax.computed_zorder = False  # arrows (on the visible side only) drawn over the surface
    floor = max(float(k.max()) * 1e-6, float(np.finfo(np.float64).tiny))
    col = np.log10(np.maximum(k[S.faces].mean(1), floor))
    col = (col - col.min()) / max(float(np.ptp(col)), 1e-300)
    shade = 0.55 + 0.45 * np.abs(S.face_normals @ np.array([0.3, 0.3, 0.9]) / np.linalg.norm(
        [0.3, 0.3, 0.9]))
    rgba = colormaps["viridis"](col)
    rgba[:, :3] *= shade[:, None]
    ax.add_collection3d(Poly3DCollection(p[S.faces], facecolors=rgba, linewidths=0))
    elev, azim = np.radians(35.0), np.radians(-60.0)
    eye = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    norm = np.linalg.norm(vec, axis=1)
    show = np.flatnonzero((norm > 1e-3 * norm.max()) & (S.vertex_normals @ eye > 0.3))
    if len(show) > 300:
        show = np.random.default_rng(0).choice(show, 300, replace=False)
    u = vec[show] / norm[show, None]
    span = float(np.ptp(p, axis=0).max())
    lift = p[show] + 0.005 * span * S.vertex_normals[show]
    ax.quiver(lift[:, 0], lift[:, 1], lift[:, 2], u[:, 0], u[:, 1], u[:, 2],
              length=0.03 * span, color="red", linewidth=0.7, zorder=5)
    lo, hi = p.min(0), p.max(0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_box_aspect(np.maximum(hi - lo, 1e-3 * span))
    ax.view_init(elev=35, azim=-60)
    ax.set_axis_off()
    ax.set_title(f"heat kernel from one vertex (log colour) and the vector heat-transported\n"
                 f"from it (arrows, visible side) ({mesh})",
                 fontsize=9)
    return _save(fig, path)
