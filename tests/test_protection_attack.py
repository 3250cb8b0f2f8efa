"""Attacking protected templates (id3pm.evaluation.protection) with retrieval, judged by
black boxes the test builds: random linear maps of the pixels. An attacker that does not
know a secret rotation retrieves the wrong people; one that protects its own pool with
the scheme finds them, under the protected system and under an independent encoder."""

import numpy as np
import pytest

from id3pm.encoders import Encoder, EncodeResult
from id3pm.evaluation.baselines import NearestNeighbour
from id3pm.evaluation.sar import impostor_distances
from id3pm.evaluation.protection import (Preimage, ProtectedSystem, attack_protected, aware_retrieval,
                                         protection_label)


class LinearPixelEncoder(Encoder):
    """vector = W @ (pixels / 255 - 1/2): a black box whose (zero-mean) vectors separate
    the test's faces."""

    name = "linear-pixel"
    crop = None
    distance = "euclidean"

    def __init__(self, dim: int, seed: int, size: int = 8):
        super().__init__()
        self.w = np.random.default_rng(seed).normal(size=(dim, size * size * 3)) / np.sqrt(size * size * 3)
        self.dim = dim

    def spec(self) -> dict:
        return {"name": self.name}

    def encode_crops(self, crops):  # pragma: no cover - encode() is overridden
        raise NotImplementedError

    def encode(self, images, aligned=False, keys=None):
        flat = np.stack([np.asarray(i, np.float64).reshape(-1) / 255.0 - 0.5 for i in images])
        return EncodeResult((flat @ self.w.T).astype(np.float32), [None] * len(images))


@pytest.fixture(scope="module")
def people():
    """40 people: a training photo each (the attacker's pool) and a second photo (the
    originals whose templates are attacked), with independent noise."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, size=(40, 8, 8, 3))
    photo = lambda: np.clip(faces + rng.normal(0, 12, faces.shape), 0, 255).astype(np.uint8)  # noqa: E731
    return photo(), photo()


def test_knowing_the_scheme_is_what_makes_retrieval_work(people):
    pool_images, originals = people
    cond, independent = LinearPixelEncoder(32, seed=1), LinearPixelEncoder(24, seed=2)
    vectors = cond.encode(list(originals)).vectors
    ind_orig = independent.encode(list(originals)).vectors
    pool_vectors = cond.encode(list(pool_images)).vectors
    system = ProtectedSystem(cond, {"name": "protected", "encoder": {"name": "linear-pixel"},
                                    "transform": "orthonormal", "key": 3})
    assert system.label == "orthonormal key=3"
    unaware = NearestNeighbour(pool_vectors, pool_images, "euclidean")
    aware = aware_retrieval(system, pool_vectors, pool_images)
    undone = Preimage(system, None, unaware)  # plain retrieval fed Q^T t: needs no pool to undo a rotation
    rows, notes = attack_protected(system, [("unaware", unaware), ("aware", aware), ("aware", undone)], vectors,
                                   independent, ind_orig)
    assert not notes
    knows, blind = rows["orthonormal key=3 · aware: nearest neighbour"], rows["orthonormal key=3 · unaware: nearest neighbour"]
    for enc in ("conditioning", "independent"):  # the same faces retrieved
        assert rows["orthonormal key=3 · aware: nearest neighbour via preimage"]["identity"][enc]["mean"] == \
            pytest.approx(knows["identity"][enc]["mean"], abs=1e-6)
    for enc in ("conditioning", "independent"):
        assert knows["sar_type1"][enc]["fmr=0.01"]["sar"] >= 0.95  # the right person, the other photo
        assert blind["sar_type1"][enc]["fmr=0.01"]["sar"] <= 0.2  # someone else
        assert knows["identity"][enc]["mean"] < blind["identity"][enc]["mean"]
    # a rotation keeps distances: the protected system's threshold is the plain one's
    assert knows["identity"]["conditioning"]["mean"] == pytest.approx(
        np.linalg.norm(pool_vectors - vectors, axis=1).mean(), rel=1e-4)
    # the independent encoder's impostor distances, computed once by the caller for all schemes, are used as given
    given = impostor_distances(ind_orig, independent.distance)
    again, _ = attack_protected(system, [("aware", aware)], vectors, independent, ind_orig, independent_impostors=given)
    assert again["orthonormal key=3 · aware: nearest neighbour"]["sar_type1"] == knows["sar_type1"]
    again, _ = attack_protected(system, [("aware", aware)], vectors, independent, ind_orig, independent_impostors=given * 0)
    assert again["orthonormal key=3 · aware: nearest neighbour"]["sar_type1"]["independent"]["fmr=0.01"]["threshold"] == 0


def test_an_unaware_attacker_cannot_feed_templates_of_another_length(people):
    pool_images, originals = people
    cond = LinearPixelEncoder(32, seed=1)
    vectors = cond.encode(list(originals)).vectors
    system = ProtectedSystem(cond, {"transform": "biohash", "key": 5, "bits": 16})
    unaware = NearestNeighbour(cond.encode(list(pool_images)).vectors, pool_images, "euclidean")
    aware = aware_retrieval(system, cond.encode(list(pool_images)).vectors, pool_images)
    rows, notes = attack_protected(system, [("unaware", unaware), ("aware", aware)], vectors, None, None)
    assert list(rows) == ["biohash bits=16 key=5 · aware: nearest neighbour"]
    assert "32-d vectors and the templates are 16-d" in notes[0]
    # 16 sign bits still single out most of 40 people
    assert rows["biohash bits=16 key=5 · aware: nearest neighbour"]["sar_type1"]["conditioning"]["fmr=0.01"]["sar"] > 0.5


def test_protection_labels_name_the_scheme_and_its_options():
    assert protection_label({"name": "protected", "encoder": {"name": "dlib"}, "transform": "noise", "snr_db": 10.0,
                             "key": 7}) == "noise key=7 snr_db=10.0"


class SplitOfFaces:
    """A prepared data set's interface, over in-memory 8 px faces: every row in the holdout."""

    manifest = {"sizes": [8]}

    def __init__(self, faces, encoder):
        self.faces, self.stored = faces, encoder.encode(faces).vectors

    def split_indices(self, split):
        return np.arange(len(self.faces))

    sample_indices = __import__("id3pm.data", fromlist=["PreparedDataset"]).PreparedDataset.sample_indices

    def vectors(self, idx):
        return self.stored[idx]

    def images(self, size, idx):
        return self.faces[idx]

    def identities(self, idx):
        return None  # no identity labels (as UTKFace): every pair is an impostor pair


def test_sar_thresholds_come_from_more_images_than_the_evaluated_ones(people):
    from id3pm.evaluation import EvalConfig, Evaluation

    cond, independent = LinearPixelEncoder(32, seed=1), LinearPixelEncoder(24, seed=2)
    ev = Evaluation.__new__(Evaluation)  # only the parts threshold_population reads
    ev.cfg, ev.size, ev.judges = EvalConfig(out="unused", limit=5, threshold_ids=30), 8, [("independent", independent)]
    ev.data = SplitOfFaces(people[1], cond)
    idx = ev.data.sample_indices("holdout", 5)
    own = independent.encode(people[1][idx]).vectors
    cond_all, judged = ev.threshold_population(idx, ev.data.vectors(idx), {"independent": own})
    ind_all = judged["independent"]
    population = ev.data.sample_indices("holdout", 30)
    assert cond_all.shape == (30, 32) and ind_all.shape == (30, 24)
    np.testing.assert_allclose(cond_all, ev.data.stored[population])  # stored vectors of the 30 images
    np.testing.assert_allclose(ind_all, independent.encode(people[1][population]).vectors, rtol=1e-6)
    ev.judges = []
    assert ev.threshold_population(idx, cond_all[:5], {})[1] == {}  # no encoder but the conditioning one


class PlainVectors:
    """A 'method' that returns the vector it is fed, to look at what a preimage feeds."""

    name = "echo"

    def reconstruct(self, vectors, num_samples, seed):
        return vectors


def dlib_like_vectors(n: int, seed: int) -> np.ndarray:
    """128-d vectors with a shared offset and unequal spread, as dlib's are (not zero-mean)."""
    rng = np.random.default_rng(seed)
    return (0.05 + rng.normal(size=(n, 128)) * np.linspace(0.02, 0.1, 128)).astype(np.float32)


def cosine(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_a_rotation_is_undone_exactly_and_other_schemes_by_a_fitted_linear_preimage():
    pool, held_out = dlib_like_vectors(4000, seed=0), dlib_like_vectors(300, seed=1)
    rotation = ProtectedSystem(LinearPixelEncoder(128, seed=0), {"transform": "orthonormal", "key": 9})
    undo = Preimage(rotation, None, PlainVectors())
    np.testing.assert_allclose(undo.reconstruct(rotation.templates(held_out), 1, 0), held_out, atol=1e-5)
    # noise at 3 dB: the fitted map shrinks towards the mean, so it lands closer than the template itself
    noisy = ProtectedSystem(LinearPixelEncoder(128, seed=0), {"transform": "noise", "snr_db": 3.0, "key": 9})
    t = noisy.templates(held_out)
    assert np.linalg.norm(Preimage(noisy, pool, PlainVectors())(t) - held_out, axis=1).mean() < \
        0.9 * np.linalg.norm(t - held_out, axis=1).mean()
    # BioHashing keeps only signs, yet they still point back along the vector, much better
    # than the mean vector does; fed as they are (+-1), they point nowhere near it
    hashed = ProtectedSystem(LinearPixelEncoder(128, seed=0), {"transform": "biohash", "key": 9})
    t = hashed.templates(held_out)
    estimate = Preimage(hashed, pool, PlainVectors())(t)
    centred = lambda v: v - pool.mean(axis=0)  # noqa: E731
    assert cosine(centred(estimate), centred(held_out)).mean() > 0.6
    assert abs(cosine(centred(t), centred(held_out)).mean()) < 0.1
    with pytest.raises(ValueError, match="a pool of 100 plain vectors cannot fit a 128-d preimage"):
        Preimage(hashed, pool[:100], PlainVectors())
