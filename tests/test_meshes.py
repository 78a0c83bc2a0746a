import numpy as np

import manifoldmp as mmp


def test_bundled_meshes_match_their_generators():
    assert set(mmp.meshes.names()) >= {"genus2", "torus", "icosphere3", "disk"}
    for name in mmp.meshes.names():
        S = mmp.meshes.load(name)
        G = mmp.meshes._BUNDLED[name]()
        assert np.array_equal(S.faces, G.faces)
        assert np.abs(S.vertices - G.vertices).max() < 1e-10


def test_icosphere_sizes_and_outward_orientation():
    for s in range(4):
        S = mmp.meshes.icosphere(s)
        assert S.n_vertices == 10 * 4**s + 2
        n = S.face_normals
        assert np.all(np.einsum("ij,ij->i", n, S.vertices[S.faces].mean(1)) > 0)
        np.testing.assert_allclose(np.linalg.norm(S.vertices, axis=1), 1.0, atol=1e-14)
