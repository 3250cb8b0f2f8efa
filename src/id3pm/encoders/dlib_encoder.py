"""dlib's ResNet face descriptor (128-d), the default black box. Works offline: the
weights ship in the `face-recognition-models` package."""

from __future__ import annotations

import numpy as np

from id3pm.alignment import model_path
from id3pm.encoders.base import Crop, Encoder


class DlibEncoder(Encoder):
    name = "dlib"
    dim = 128
    crop = Crop(150, 0.25)  # the 150x150 chip of dlib.get_face_chip(padding=0.25)
    distance = "euclidean"  # dlib's own threshold: 0.6

    def __init__(self, num_jitters: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_jitters = num_jitters  # >1 averages descriptors of jittered copies (slower)
        self._net = None

    def spec(self) -> dict:
        return {"name": self.name, "num_jitters": self.num_jitters}

    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._net is None:
            import dlib

            self._net = dlib.face_recognition_model_v1(model_path("dlib_face_recognition_resnet_model_v1.dat"))
        chips = [np.ascontiguousarray(c) for c in crops]
        return np.array(self._net.compute_face_descriptor(chips, num_jitters=self.num_jitters), dtype=np.float32)
