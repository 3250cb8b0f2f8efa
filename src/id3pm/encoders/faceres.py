"""`faceres`: an independent face-recognition network for evaluation, the HSE-FaceRes
MobileNet (1024-d descriptor, age, gender) as shipped in @vladmandic/human@3.3.6 (MIT),
run in PyTorch by `id3pm.tfjs_graph.TfjsGraph`. Also human's `emotion` model.

The TF.js files are not in the repository: `make models` (scripts/fetch_human_models.sh)
puts them in cache/human/models/, or point ID3PM_HUMAN_MODELS at a folder holding
faceres.json/.bin (and emotion.json/.bin for EmotionModel). Nothing is downloaded at run time.

Preprocessing follows human's src/face/faceres.ts and src/gear/emotion.ts:
- faceres: the face crop (RGB scaled to 0..1 by human) is resized to 224x224 and
  multiplied by 255, i.e. the network sees float RGB in 0..255, no mean/std.
- emotion: the crop is resized to 64x64, turned to grey with (0.2989, 0.5870, 0.1140)
  and mapped to -1..1 ((g - 0.5) * 2); output = softmax over EMOTIONS.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from id3pm.encoders.base import Crop, Encoder

# human's labels for its 1-channel emotion model (src/gear/emotion.ts), in output order
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
DESCRIPTOR, GENDER, AGE = "global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"
BATCH = 8  # crops per graph call: ~10 MB of activations per face; larger batches fall out of cache


def default_models_dir() -> Path:
    env = os.environ.get("ID3PM_HUMAN_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "cache" / "human" / "models"


def _check_files(models_dir: Path, stem: str) -> Path:
    for suffix in (".json", ".bin"):
        f = models_dir / f"{stem}{suffix}"
        if not f.is_file():
            raise FileNotFoundError(
                f"{f} is missing: run `make models` (scripts/fetch_human_models.sh) to fetch human's TF.js models, "
                "or set ID3PM_HUMAN_MODELS to a folder that holds them"
            )
    return models_dir / f"{stem}.json"


def _load_graph(models_dir: Path, stem: str):
    from id3pm.tfjs_graph import TfjsGraph

    return TfjsGraph(_check_files(models_dir, stem))


def _chunks(crops: list[np.ndarray]):
    for i in range(0, len(crops), BATCH):
        yield crops[i : i + BATCH]


def _resized(crop: np.ndarray, size: int) -> np.ndarray:
    if crop.shape[:2] == (size, size):
        return crop
    # Area averaging when shrinking (human's plain bilinear resize aliases), bilinear when growing.
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


class FaceresEncoder(Encoder):
    name = "faceres"
    dim = 1024
    # human feeds faceres its face tensor: the BlazeFace box enlarged 1.4x and squared, so a
    # loose crop with hair and chin. 0.5 (dlib chip padding) is about that framing; on the
    # 600 ORL pairs paddings 0.4-0.6 separate people equally well (cosine AUC 0.996-0.997),
    # the tight 0.25 worse (0.987).
    crop = Crop(224, 0.5)
    # human compares descriptors by Euclidean distance (src/face/match.ts: sum of squared
    # differences, scaled). The descriptor is a mean of ReLU6 activations, so its length
    # follows image contrast and exposure, which the angle ignores: on all 600 ORL pairs
    # cosine gives AUC 0.9965 vs 0.9950 for Euclidean at padding 0.5 (0.987 vs 0.972 at
    # 0.25, 0.993 vs 0.983 at 0.75), so id3pm uses cosine.
    distance = "cosine"

    def __init__(self, models_dir: str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        _check_files(self.models_dir, "faceres")  # fail now, not at the first batch; loaded lazily
        self._graph = None

    def spec(self) -> dict:
        spec = {"name": self.name}
        if self.models_dir != default_models_dir():
            spec["models_dir"] = str(self.models_dir)
        return spec

    @property
    def graph(self):
        if self._graph is None:
            self._graph = _load_graph(self.models_dir, "faceres")
        return self._graph

    def prepare(self, crops: list[np.ndarray]) -> np.ndarray:
        """The network input for uint8 RGB crops: (N, 224, 224, 3) float32 RGB in 0..255."""
        return np.stack([_resized(c, self.crop.size) for c in crops]).astype(np.float32)

    def _run(self, crops: list[np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        parts = [self.graph.run({"input_1": self.prepare(c)}, outputs) for c in _chunks(crops)]
        widths = {DESCRIPTOR: self.dim, GENDER: 1, AGE: 100}
        return {o: np.concatenate([p[o] for p in parts]) if parts else np.zeros((0, widths[o]), np.float32)
                for o in outputs}

    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        return self._run(crops, [DESCRIPTOR])[DESCRIPTOR].astype(np.float32)

    def describe(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Age and gender of crops cut like `self.crop`: {"age": (N,) years by human's
        formula, "age_probs": (N, 100) over 0..99, "male": (N,) P(male) (human: > 0.5 is
        male), "descriptor": (N, 1024)}."""
        out = self._run(crops, [DESCRIPTOR, GENDER, AGE])
        probs = out[AGE]
        return {"age": np.array([human_age(p) for p in probs]), "age_probs": probs,
                "male": out[GENDER][:, 0], "descriptor": out[DESCRIPTOR]}


def human_age(probs: np.ndarray) -> float:
    """human's age read-out (src/face/faceres.ts): the argmax bin moved towards its larger
    neighbour, rounded to 0.1 years."""
    i = int(np.argmax(probs))
    before = probs[i - 1] if i > 0 else np.nan  # JS: all[-1] is undefined, the comparison is false
    after = probs[i + 1] if i + 1 < len(probs) else np.nan
    age = 10 * i - 100 * before if before > after else 10 * i + 100 * (0.0 if np.isnan(after) else after)
    return math.floor(float(age) + 0.5) / 10  # JS Math.round: halves go up


class EmotionModel:
    """human's `emotion` model (oarriaga/face_classification, 64x64 grey): probabilities
    of EMOTIONS for face crops (uint8 RGB, any size; cut them like FaceresEncoder.crop)."""

    labels = EMOTIONS
    size = 64
    crop = FaceresEncoder.crop

    def __init__(self, models_dir: str | os.PathLike | None = None):
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self.graph = _load_graph(self.models_dir, "emotion")

    def prepare(self, crops: list[np.ndarray]) -> np.ndarray:
        """The network input for uint8 RGB crops: (N, 64, 64, 1) grey in -1..1, as human
        makes it (RGB / 255, weighted sum, (g - 0.5) * 2)."""
        rgb = np.stack([_resized(c, self.size) for c in crops]).astype(np.float32) / 255.0
        grey = (rgb * np.array([0.2989, 0.5870, 0.1140], np.float32)).sum(-1, keepdims=True)
        return ((grey - 0.5) * 2.0).astype(np.float32)

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, 7) probabilities, columns in the order of `labels`."""
        out = [self.graph.run({"input_1": self.prepare(c)}, ["Identity"])["Identity"] for c in _chunks(crops)]
        return np.concatenate(out) if out else np.zeros((0, len(EMOTIONS)), np.float32)
