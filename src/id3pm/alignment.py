"""Face detection and the ONE canonical crop that every image goes through.

The canonical crop is dlib's face chip (`dlib.get_face_chip(padding=0.25)`): a
similarity transform that puts dlib's 5 landmarks (eye corners, nose base) on a
fixed template. Training images, user inputs and generated images all live in this
geometry, so a generated 64x64 image can be encoded without detection
(`aligned=True`), and every encoder derives its own crop from it.

Where the chip reaches past the photo (UTKFace crops are tight) the border pixels
are replicated instead of dlib's black fill, which the network would learn to draw.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from id3pm.images import ImageError, check_rgb

CANONICAL_PADDING = 0.25  # dlib's default chip padding: what the dlib ResNet expects
CANONICAL_SIZE = 256  # working resolution of canonical crops before resizing to the model's size
# Where dlib's HOG detector puts the face box inside a canonical crop, as fractions of its
# side (left, top, right, bottom): the median centre (0.459, 0.450) and side 0.82 of the
# detections of 302 UTKFace and Yale faces mapped into their crops. Used to run the
# landmark models on already-aligned images without detection.
CANONICAL_FACE_BOX = (0.049, 0.040, 0.869, 0.860)
SECOND_FACE_SCORE = 0.5  # detector score an additional face needs to count
MIN_DETECT_SIDE = 200  # smaller photos are upscaled before detection (HOG finds faces >= ~80 px)


def model_path(filename: str) -> str:
    """Path of a model file shipped in the `face-recognition-models` package, found
    without importing it (its __init__ needs the deprecated pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed: pip install face-recognition-models")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", filename)
    if not os.path.exists(path):
        raise RuntimeError(f"missing dlib model file {path}")
    return path


class NoFaceError(ImageError):
    pass


class MultipleFacesError(ImageError):
    pass


@dataclass
class AlignedFace:
    crop: np.ndarray  # canonical crop, (size, size, 3) uint8
    chip_to_image: np.ndarray  # 2x3 affine: canonical-crop pixel -> source pixel, for a crop of side `size`
    landmarks5: np.ndarray  # (5, 2) dlib landmarks in source pixels
    box: tuple[float, float, float, float]  # detection box in source pixels
    num_faces: int  # faces found in the source


def chip_transform(landmarks5: np.ndarray, size: int, padding: float) -> np.ndarray:
    """2x3 matrix mapping chip pixels to source pixels, the same geometry as
    dlib.get_face_chip(img, shape, size, padding)."""
    import dlib

    shape = dlib.full_object_detection(
        dlib.rectangle(0, 0, 1, 1), [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks5]
    )
    details = dlib.get_face_chip_details(shape, size, padding)
    rect, angle = details.rect, details.angle
    scale = (rect.right() - rect.left()) / (size - 1)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    offset = centre - linear @ np.array([(size - 1) / 2, (size - 1) / 2])
    return np.hstack([linear, offset[:, None]])


def warp(img: np.ndarray, chip_to_image: np.ndarray, size: int) -> np.ndarray:
    """Cut a chip. When the chip shrinks the source a lot, warp at a multiple of the
    size and area-downsample, so the result is not aliased."""
    scale = math.hypot(chip_to_image[0, 0], chip_to_image[1, 0])
    factor = max(1, min(8, int(math.floor(scale))))
    big = size * factor
    m = chip_to_image.copy()
    if factor > 1:
        m[:, :2] /= factor
        # big pixel u' sits at chip coordinate (u' + 0.5) / factor - 0.5
        m[:, 2] = chip_to_image[:, 2] - chip_to_image[:, :2] @ np.array([(1 - 1 / factor) / 2] * 2)
    out = cv2.warpAffine(img, m, (big, big), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA) if factor > 1 else out


def recrop(canonical: np.ndarray, padding: float, size: int) -> np.ndarray:
    """From a canonical crop to the same template with another padding and size (the
    chip spans 1 + 2 * padding template units), replicating borders when it grows."""
    side = canonical.shape[0]
    new_side = side * (1 + 2 * padding) / (1 + 2 * CANONICAL_PADDING)
    scale = new_side / size  # canonical pixels per output pixel
    c = (side - 1) / 2
    m = np.array([[scale, 0.0, c - scale * (size - 1) / 2], [0.0, scale, c - scale * (size - 1) / 2]])
    if abs(padding - CANONICAL_PADDING) < 1e-9 and side == size:
        return canonical
    return warp(canonical, m, size)


def canonical_face_box(side: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = CANONICAL_FACE_BOX
    return (int(round(left * side)), int(round(top * side)), int(round(right * side)), int(round(bottom * side)))


class FaceAligner:
    """dlib HOG face detector (with the CNN detector as fallback) and landmark models.
    Thread-safe lazy loading; one instance per process is enough."""

    def __init__(self, cnn_fallback: bool = True, upsample: int = 1):
        self.cnn_fallback = cnn_fallback  # the CNN (MMOD) detector is slower but finds tilted faces
        self.upsample = upsample  # HOG pyramid upsampling
        self._lock = threading.Lock()
        self._models: dict = {}

    def _model(self, name: str):
        with self._lock:
            if name not in self._models:
                import dlib

                self._models[name] = {
                    "hog": lambda: dlib.get_frontal_face_detector(),
                    "cnn": lambda: dlib.cnn_face_detection_model_v1(model_path("mmod_human_face_detector.dat")),
                    "sp5": lambda: dlib.shape_predictor(model_path("shape_predictor_5_face_landmarks.dat")),
                    "sp68": lambda: dlib.shape_predictor(model_path("shape_predictor_68_face_landmarks.dat")),
                }[name]()
            return self._models[name]

    def detect(self, img: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes (left, top, right, bottom) in source pixels, largest first. Weak
        extra detections (HOG score < SECOND_FACE_SCORE, often false positives) are
        dropped so that they do not make a one-person photo "several faces"."""
        scale = max(1.0, MIN_DETECT_SIDE / min(img.shape[:2]))
        work = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) if scale > 1 else img
        rects, scores, _ = self._model("hog").run(work, self.upsample, 0.0)
        found = list(zip(rects, scores))
        if not found and self.cnn_fallback:
            found = [(d.rect, d.confidence) for d in self._model("cnn")(work, self.upsample)]
        if not found:
            return []
        best = max(score for _, score in found)
        kept = [r for r, score in found if score == best or score >= SECOND_FACE_SCORE]
        boxes = [(r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale) for r in kept]
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))

    def landmarks(self, img: np.ndarray, box, points: int = 5) -> np.ndarray:
        import dlib

        rect = dlib.rectangle(*[int(round(v)) for v in box])
        shape = self._model("sp5" if points == 5 else "sp68")(img, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def align(
        self, img: np.ndarray, size: int = CANONICAL_SIZE, multiple: str = "largest", name: str = "image"
    ) -> AlignedFace:
        """Detect the face and cut the canonical crop. multiple = "largest" takes the
        biggest face when there are several, "error" refuses the image."""
        check_rgb(img, name)
        boxes = self.detect(img)
        if not boxes:
            raise NoFaceError(f"{name}: no face found")
        if len(boxes) > 1 and multiple == "error":
            raise MultipleFacesError(f"{name}: {len(boxes)} faces found, expected one")
        lm = self.landmarks(img, boxes[0])
        m = chip_transform(lm, size, CANONICAL_PADDING)
        return AlignedFace(warp(img, m, size), m, lm, boxes[0], len(boxes))

    def landmarks_aligned(self, canonical: np.ndarray, points: int = 68) -> np.ndarray:
        """Landmarks of an already-aligned canonical crop, without detection."""
        return self.landmarks(canonical, canonical_face_box(canonical.shape[0]), points)
