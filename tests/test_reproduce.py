"""``manifoldmp reproduce``: the claims' measured values, the report files and the figures."""

import json
import math
import os

import numpy as np
import pytest
import scipy.linalg as la
from PIL import Image

import manifoldmp as mmp
from manifoldmp.cli import main
from manifoldmp.reproduce import Claim, Report, load_mesh, reproduce
from manifoldmp.reproduce import _claims as C

from .conftest import shared_mesh

FULL = os.environ.get("MANIFOLDMP_FULL_TESTS") == "1"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The CI job: ``manifoldmp reproduce --quick`` on the bundled default, through the CLI."""
    out = tmp_path_factory.mktemp("reproduce")
    code = main(["reproduce", "--quick", "--out", str(out)])
    rep = json.loads((out / "report.json").read_text())
    return code, out, rep


def _claim(rep, key):
    hits = [c for c in rep["claims"] if c["key"] == key]
    assert len(hits) == 1, key
    return hits[0]


def test_quick_run_passes_every_claim(quick_run):
    code, _, rep = quick_run
    failed = [(c["key"], c["domain"], c["measured"]) for c in rep["claims"] if not c["passed"]]
    assert failed == [] and code == 0 and rep["passed"] and rep["quick"]
    assert rep["meshes"] == ["genus2"]
    keys = {c["key"] for c in rep["claims"]}
    for section, prefix in [(1, "energy."), (2, "euler."), (3, "frame_bundle."),
                            (3, "casimir."), (4, "product."), (5, "sphere."), (5, "torus."),
                            (5, "holonomy."), (5, "heat_trace."), (5, "varadhan."),
                            (6, "equivariance.")]:
        assert any(k.startswith(prefix) for k in keys), prefix
        assert all(c["section"] == section for c in rep["claims"]
                   if c["key"].startswith(prefix))
    assert rep["seconds"] < 120  # the budget for --quick on 2 cores


def test_report_values_are_the_claimed_truths(quick_run):
    _, _, rep = quick_run
    # identities hold to rounding
    for key in ["energy.edge_sum", "energy.gradient", "energy.gauge_invariance",
                "euler.message_round", "casimir.factorization", "frame_bundle.fourier",
                "product.diagonal_identity", "product.selection_rules", "holonomy.per_face",
                "holonomy.gauss_bonnet", "torus.flat_exact", "torus.twisted_exact",
                "equivariance.float64"]:
        assert _claim(rep, key)["measured"] < 1e-10, key
    # rates: first-order Euler, second-order sphere spectra and Casimir limit
    assert abs(_claim(rep, "euler.explicit_order")["measured"] - 1) < 0.1
    assert abs(_claim(rep, "euler.implicit_order")["measured"] - 1) < 0.1
    assert abs(_claim(rep, "sphere.order")["measured"] - 2) < 0.3
    assert abs(_claim(rep, "casimir.limit_order")["measured"] - 2) < 0.02
    # monotone energy: the largest step-to-step change is a decrease
    assert _claim(rep, "energy.monotone")["measured"] < 0
    assert _claim(rep, "euler.stable_below")["measured"] < 0
    assert _claim(rep, "euler.unstable_above")["measured"] > 1e6
    gb = _claim(rep, "holonomy.gauss_bonnet")
    assert gb["details"]["genus"] == 2 and gb["details"]["chi"] == -2
    # the negative controls inside the claims are far from passing
    assert _claim(rep, "product.selection_rules")["details"]["wrong_type_error"] > 0.1
    assert _claim(rep, "frame_bundle.fourier")["details"]["without_casimir_error"] > 1e-3
    assert _claim(rep, "product.diagonal_identity")["details"][
        "product_vs_diffused_product"] > 0.1
    assert 0.0 < _claim(rep, "varadhan.sphere")["measured"] < 0.05


def test_report_files_and_figures(quick_run):
    _, out, rep = quick_run
    md = (out / "report.md").read_text()
    assert md.count("| pass |") == len(rep["claims"])
    for c in rep["claims"]:
        assert c["key"] in md
        assert math.isfinite(c["measured"]) and c["tolerance"] > 0
    assert len(rep["figures"]) >= 8
    for name in rep["figures"].values():
        img = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img.std() > 5  # drawn, not blank
        assert f"]({name})" in md


def test_claim_relations():
    assert Claim(1, "k", "d", "c", "f", 1e-13, 1e-12).passed
    assert not Claim(1, "k", "d", "c", "f", 1e-11, 1e-12).passed
    assert Claim(1, "k", "d", "c", "f", 1e4, 1e3, "min").passed
    assert not Claim(1, "k", "d", "c", "f", 10.0, 1e3, "min").passed
    assert Claim(1, "k", "d", "c", "f", 1.9, 0.15, "near", 2.0).passed
    assert not Claim(1, "k", "d", "c", "f", 1.5, 0.15, "near", 2.0).passed
    assert not Claim(1, "k", "d", "c", "f", float("nan"), 1.0).passed
    rep = Report([Claim(1, "k", "d", "c", "f", float("nan"), 1.0)], ["d"], True)
    assert not rep.passed and rep.failures()[0].key == "k"
    assert rep.to_dict()["claims"][0]["measured"] == "nan"
    with pytest.raises(KeyError):
        rep.get("missing")
    with pytest.raises(mmp.ParameterError, match="relation"):
        Claim(1, "k", "d", "c", "f", 1.0, 1.0, "below")
    with pytest.raises(mmp.ParameterError, match="target"):
        Claim(1, "k", "d", "c", "f", 1.0, 1.0, "near")
    with pytest.raises(mmp.ParameterError, match="tolerance"):
        Claim(1, "k", "d", "c", "f", 1.0, float("nan"))


def test_frame_bundle_operator_is_the_fourier_sum_of_bundle_operators():
    # the real V*N operator, DFT-transformed, is block-diagonal with L_n + m C_N(n) blocks
    S = mmp.meshes.icosphere(1)
    N = 5
    LP, mP = C.frame_bundle_operator(S, N)
    assert abs(LP - LP.T).max() < 1e-12 and np.isrealobj(LP.data)
    V = S.n_vertices
    np.testing.assert_array_equal(mP, np.repeat(mmp.mass_matrix(S).diagonal(), N))
    F = np.exp(-2j * np.pi * np.outer(np.arange(N), np.arange(N)) / N) / np.sqrt(N)  # unitary
    U = np.kron(np.eye(V), F)
    B = U @ LP.toarray() @ U.conj().T
    m = mmp.mass_matrix(S).diagonal()
    for k in range(-2, 3):
        idx = np.arange(V) * N + (k % N)
        Ln = mmp.connection_laplacian(S, abs(k)).toarray()
        Ln = Ln if k >= 0 else Ln.conj()
        expected = Ln + np.diag(m) * C.discrete_casimir(N, k)
        np.testing.assert_allclose(B[np.ix_(idx, idx)], expected, atol=1e-11)
        other = np.setdiff1d(np.arange(V * N), idx)
        assert np.abs(B[np.ix_(idx, other)]).max() < 1e-11  # no coupling between sectors
    ev = la.eigvalsh(C.fibre_laplacian(7).toarray())
    np.testing.assert_allclose(np.sort(ev), np.sort(C.discrete_casimir(7, np.arange(-3, 4))),
                               atol=1e-12)


def test_patch_is_a_connected_submesh():
    S = mmp.meshes.load("genus2")
    P = C.patch(S, 120)
    assert 60 <= P.n_vertices <= 120 and P.n_components == 1 and P.n_boundary_loops >= 1
    assert C.patch(mmp.meshes.icosphere(1), 500).n_vertices == 42  # small meshes kept whole


def test_bad_mesh_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "no-such-mesh.obj", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "bundled mesh" in capsys.readouterr().err
    with pytest.raises(mmp.ParameterError, match="bundled name"):
        load_mesh(3.5)
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(mmp.ParameterError, match="is a file"):
        reproduce("genus2", out=afile)
    with pytest.raises(mmp.ParameterError, match="seed"):
        reproduce("genus2", seed=-1)
    with pytest.raises(mmp.ParameterError, match="quick"):
        reproduce("genus2", quick="yes")
    pts = tmp_path / "cloud.ply"
    import trimesh

    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(pts)
    with pytest.raises(mmp.ParameterError, match="no triangles"):
        load_mesh(str(pts))


def test_failing_check_is_reported_not_raised(monkeypatch):
    def boom(case):
        raise RuntimeError("exploded")

    monkeypatch.setattr(C, "check_energy", boom)
    for name in ["check_euler", "check_casimir", "check_product", "check_holonomy",
                 "check_varadhan_mesh", "check_equivariance", "check_casimir_limit",
                 "check_sphere_spectra", "check_heat_trace", "check_varadhan_sphere"]:
        monkeypatch.setattr(C, name, lambda *a: ([], {}))
    rep = reproduce(mmp.meshes.icosphere(1), quick=True, progress=False)
    bad = rep.failures()
    assert len(bad) == 1 and "exploded" in bad[0].claim and not rep.passed


@pytest.mark.skipif(not FULL, reason="full reproduction on spot, boot and nut takes minutes; "
                    "set MANIFOLDMP_FULL_TESTS=1")
def test_full_mode_on_shared_meshes(tmp_path):
    paths = [str(shared_mesh(n)) for n in ("spot.obj", "boot.obj", "nut.ply")]
    rep = reproduce(paths, out=tmp_path, progress=False)
    assert rep.failures() == []
    genus = {c.domain: c.details["genus"] for c in rep.claims if c.key == "holonomy.gauss_bonnet"}
    assert genus == {"spot": 0, "boot": 12, "nut": 1}


def test_meshes_are_scaled_to_the_unit_sphere_area():
    from manifoldmp.reproduce import normalized

    S = mmp.meshes.load("genus2")
    T = normalized(S)
    assert abs(T.face_areas.sum() - 4 * np.pi) < 1e-10
    s2 = 4 * np.pi / S.face_areas.sum()
    # the cotan Laplacian is scale-free, the mass scales with area: eigenvalues scale by 1/s2
    L_T, L_S = mmp.connection_laplacian(T, 1), mmp.connection_laplacian(S, 1)
    assert abs(L_T - L_S).max() < 1e-12 * abs(L_S).max()
    np.testing.assert_allclose(mmp.mass_matrix(T).diagonal(),
                               s2 * mmp.mass_matrix(S).diagonal(), rtol=1e-12)
    F = mmp.meshes.flat_torus(6, 7)  # intrinsic surfaces too
    assert abs(normalized(F).face_areas.sum() - 4 * np.pi) < 1e-10


def test_aggregates_do_not_hide_nan():
    assert math.isnan(C._mx(0.1, float("nan"), 0.2)) and math.isnan(C._mn(float("nan"), 1.0))
    assert math.isnan(C._farthest([1.0, float("nan")], 1.0))
    assert C._farthest([0.9, 1.2, 1.05], 1.0) == 1.2


def test_source_vertex_is_on_the_largest_component():
    import trimesh

    small = trimesh.creation.icosphere(1, radius=0.1)
    big = trimesh.creation.icosphere(2)
    big.vertices += [3.0, 0.0, 0.0]
    S = mmp.Surface(*(lambda m: (m.vertices, m.faces))(trimesh.util.concatenate([small, big])))
    src = C.source_vertex(S)
    comp = S.vertex_components
    assert src == small.vertices.shape[0] and np.sum(comp == comp[src]) == 162
    P = C.patch(S, 50, src)  # the patch grows inside that component
    assert P.n_components == 1 and P.vertices[:, 0].min() > 1.5  # the big sphere spans x >= 2
