"""The black-box encoder interface: uint8 RGB images in, float32 (N, D) vectors out.

Nothing else in id3pm sees an encoder's weights or gradients. Every encoder takes
either raw photos (it finds and aligns the face itself) or canonical crops
(`aligned=True`, e.g. generated images), cuts its own input crop from them, and
reports failures per item instead of raising for the whole batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from id3pm.alignment import CANONICAL_SIZE, FaceAligner, MultipleFacesError, NoFaceError, chip_transform, recrop, warp
from id3pm.images import ImageError, check_rgb


@dataclass
class EncodeResult:
    vectors: np.ndarray  # (N, D) float32; the rows of failed items are NaN
    errors: list[str | None]  # None where the item was encoded, else a one-line reason naming it
    warnings: list[str | None] = field(default_factory=list)  # e.g. "3 faces found, used the largest"

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)

    def raise_first_error(self) -> np.ndarray:
        for e in self.errors:
            if e is not None:
                raise ImageError(e)
        return self.vectors


@dataclass(frozen=True)
class Crop:
    """The input crop an encoder wants, as a padding of the canonical template."""

    size: int  # side in pixels
    padding: float  # dlib chip padding (0.25: dlib's own; ~0.5: a loose head crop)


class Encoder(ABC):
    name: str = "encoder"
    dim: int = 0
    crop: Crop | None = Crop(150, 0.25)  # None: the encoder is not pixel-based (table lookup)
    distance: str = "euclidean"  # how identity distance is measured: "euclidean" or "cosine"
    encodes_pixels: bool = True  # False for a lookup table: it cannot judge new (generated) images

    def __init__(self, aligner: FaceAligner | None = None, multiple_faces: str = "largest"):
        self.aligner = aligner or FaceAligner()
        self.multiple_faces = multiple_faces  # "largest" or "error", for photos with several faces

    def spec(self) -> dict:
        """JSON-able description from which `make_encoder` rebuilds this encoder."""
        return {"name": self.name}

    # -- what a backend implements ------------------------------------------------
    @abstractmethod
    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, D) vectors for crops already cut as `self.crop` wants."""

    def crop_from_canonical(self, canonical: np.ndarray) -> np.ndarray:
        return recrop(canonical, self.crop.padding, self.crop.size)

    def crop_from_photo(self, photo: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
        face = self.aligner.align(photo, size=CANONICAL_SIZE, multiple=self.multiple_faces, name=name)
        note = f"{name}: {face.num_faces} faces found, used the largest" if face.num_faces > 1 else None
        # Cut straight from the photo at the encoder's own padding and size (no double resampling).
        return warp(photo, chip_transform(face.landmarks5, self.crop.size, self.crop.padding), self.crop.size), note

    def largest_face_landmarks68(self, photo: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
        """The 68 landmarks of the photo's largest face, for encoders with their own template
        (ArcFace 5-point): the same no-face / several-faces rules as crop_from_photo."""
        boxes = self.aligner.detect(photo)
        if not boxes:
            raise NoFaceError(f"{name}: no face found")
        if len(boxes) > 1 and self.multiple_faces == "error":
            raise MultipleFacesError(f"{name}: {len(boxes)} faces found, expected one")
        note = f"{name}: {len(boxes)} faces found, used the largest" if len(boxes) > 1 else None
        return self.aligner.landmarks(photo, boxes[0], points=68), note

    # -- the interface --------------------------------------------------------------
    def encode(
        self, images: Sequence[np.ndarray], aligned: bool = False, keys: Sequence[str] | None = None
    ) -> EncodeResult:
        """Vectors for uint8 RGB images. aligned=True: the images are canonical crops
        (any size), no detection. keys: per-image names used in error messages."""
        names = list(keys) if keys is not None else [f"image {i}" for i in range(len(images))]
        crops, errors, notes = [], [None] * len(images), [None] * len(images)
        index = []
        for i, img in enumerate(images):
            try:
                check_rgb(img, names[i])
                if aligned:
                    crop = self.crop_from_canonical(img)
                else:
                    crop, notes[i] = self.crop_from_photo(img, names[i])
                crops.append(crop)
                index.append(i)
            except ImageError as e:
                errors[i] = str(e)
        vectors = np.full((len(images), self.dim), np.nan, dtype=np.float32)
        if crops:
            out = np.asarray(self.encode_crops(crops), dtype=np.float32)
            for j, i in enumerate(index):
                if not np.isfinite(out[j]).all():
                    errors[i] = f"{names[i]}: the encoder returned a non-finite vector"
                else:
                    vectors[i] = out[j]
        return EncodeResult(vectors, errors, notes)

    def encode_one(self, image: np.ndarray, aligned: bool = False, name: str = "image") -> np.ndarray:
        return self.encode([image], aligned=aligned, keys=[name]).raise_first_error()[0]

    def identity_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return identity_distance(a, b, self.distance)


def identity_distance(a: np.ndarray, b: np.ndarray, kind: str = "euclidean") -> np.ndarray:
    """Row-wise distance between vectors (broadcasting): Euclidean, or 1 - cosine."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if kind == "cosine":
        na = a / np.linalg.norm(a, axis=-1, keepdims=True)
        nb = b / np.linalg.norm(b, axis=-1, keepdims=True)
        return 1.0 - (na * nb).sum(-1)
    return np.linalg.norm(a - b, axis=-1)


def check_vectors(vectors, dim: int, name: str = "vector") -> np.ndarray:
    """Validate identity vectors given by a user: shape (N, dim), finite."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"{name}: expected identity vectors of length {dim}, got shape {tuple(np.shape(vectors))}")
    bad = np.where(~np.isfinite(v).all(axis=1))[0]
    if len(bad):
        raise ValueError(f"{name}: row {int(bad[0])} contains NaN or infinite values")
    return v
