import json

import numpy as np
import pytest

import manifoldmp as mmp
from manifoldmp.cli import main, mesh_report


def test_default_report_on_bundled_genus2(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    assert main(["--max-type", "2", "-k", "4", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "report: genus2" in text and "euler_characteristic       -2" in text
    rep = json.loads(out_json.read_text())
    assert rep["genus"] == 2 and rep["boundary_loops"] == 0
    assert abs(rep["total_holonomy_over_2pi"] + 2) < 1e-12
    ev = rep["eigenvalues"]
    assert abs(ev["0"][0]) < 1e-9 and ev["0"][1] > 0.1  # connected: one zero mode
    assert min(ev["1"]) > 0.1  # no parallel vector field on a curved genus-2 surface
    assert set(rep["times_s"]) >= {"load_and_clean", "connection_laplacian_n1", "eigsh_n2"}


def test_report_on_sphere_matches_analytic_spectrum():
    rep = mesh_report(mmp.meshes.icosphere(4), max_type=1, k=4, progress=False)
    np.testing.assert_allclose(rep["eigenvalues"][1][:3], 1.0, rtol=2e-3)
    np.testing.assert_allclose(rep["eigenvalues"][0][1:4], 2.0, rtol=2e-3)


def test_bad_mesh_argument_exits_with_message(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "no-such-mesh.obj"])
    assert exc.value.code == 2
    assert "bundled mesh" in capsys.readouterr().err
