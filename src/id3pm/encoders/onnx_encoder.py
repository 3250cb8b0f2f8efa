"""Any face-recognition model exported to ONNX (e.g. an InsightFace ArcFace 112x112),
run with onnxruntime from a local file, with configurable crop and normalisation."""

from __future__ import annotations

import cv2
import numpy as np

from id3pm.alignment import NoFaceError
from id3pm.encoders.base import Crop, Encoder

# InsightFace's 5-point template for 112x112 ArcFace crops (eye centres, nose tip,
# mouth corners), in pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def arcface_points(landmarks68: np.ndarray) -> np.ndarray:
    """The 5 ArcFace reference points from dlib's 68 landmarks."""
    return np.array(
        [
            landmarks68[36:42].mean(0),  # left eye centre (image left)
            landmarks68[42:48].mean(0),  # right eye centre
            landmarks68[30],  # nose tip
            landmarks68[48],  # left mouth corner
            landmarks68[54],  # right mouth corner
        ]
    )


def arcface_crop(img: np.ndarray, landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """The size x size ArcFace crop: dlib's 68 landmarks -> 5 points -> similarity onto the template."""
    m, _ = cv2.estimateAffinePartial2D(arcface_points(landmarks68), ARCFACE_TEMPLATE * (size / 112.0), method=cv2.LMEDS)
    if m is None:
        raise NoFaceError("the face landmarks give no similarity transform")
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class OnnxEncoder(Encoder):
    name = "onnx"

    def __init__(
        self,
        path: str,  # local .onnx file; nothing is downloaded
        input_size: int = 112,  # square input side
        template: str = "arcface",  # "arcface": 5-point similarity to ARCFACE_TEMPLATE; "chip": dlib chip
        padding: float = 0.25,  # chip padding when template == "chip"
        mean: float | tuple = 127.5,  # input = (pixel - mean) / std
        std: float | tuple = 127.5,
        bgr: bool = False,  # channel order the model expects
        layout: str = "NCHW",  # or "NHWC"
        normalize: bool = True,  # L2-normalise the output (ArcFace embeddings are compared by cosine)
        distance: str = "cosine",
        **kwargs,
    ):
        super().__init__(**kwargs)
        import onnxruntime as ort

        self.path, self.input_size, self.template, self.padding = str(path), input_size, template, padding
        self.mean, self.std, self.bgr, self.layout, self.normalize = mean, std, bgr, layout, normalize
        self.distance = distance
        if template not in ("arcface", "chip"):
            raise ValueError(f"template must be 'arcface' or 'chip', got {template!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.crop = Crop(input_size, padding)
        out_dim = self.session.get_outputs()[0].shape[-1]
        if not isinstance(out_dim, int):  # a symbolic dimension: ask the model once
            out_dim = self.encode_crops([np.zeros((input_size, input_size, 3), np.uint8)]).shape[1]
        self.dim = int(out_dim)

    def spec(self) -> dict:
        keys = ["path", "input_size", "template", "padding", "mean", "std", "bgr", "layout", "normalize", "distance"]
        return {"name": self.name, **{k: getattr(self, k) for k in keys}}

    def _arcface_warp(self, img: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        return arcface_crop(img, landmarks68, self.input_size)

    def crop_from_canonical(self, canonical: np.ndarray) -> np.ndarray:
        if self.template == "chip":
            return super().crop_from_canonical(canonical)
        return self._arcface_warp(canonical, self.aligner.landmarks_aligned(canonical, points=68))

    def crop_from_photo(self, photo: np.ndarray, name: str):
        if self.template == "chip":
            return super().crop_from_photo(photo, name)
        landmarks, note = self.largest_face_landmarks68(photo, name)
        return self._arcface_warp(photo, landmarks), note

    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        x = np.stack(crops).astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        out = out.reshape(len(crops), -1).astype(np.float32)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
