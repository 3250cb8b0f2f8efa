"""Identity-agnostic face attributes from dlib's 68 landmarks: head pose and
expression descriptors. Used to measure diversity and as the optional attribute
vector that conditions the model ("set 1" of ID3PM: pose and expression).

Head pose: OpenCV solvePnP of six landmarks against a generic 3-D face, angles in
degrees. Yaw > 0: the face turns towards the image's right; pitch > 0: it looks up;
roll > 0: it tilts counter-clockwise in the image (rotating a photo by +a degrees
counter-clockwise adds about a to roll; mirroring negates yaw and roll).
Expression: mouth opening, mouth width (smile) and eye opening, each divided by the
distance between the eye centres so that they do not depend on scale.
"""

from __future__ import annotations

import cv2
import numpy as np

from id3pm.alignment import FaceAligner

ATTRIBUTE_GROUPS = {
    "pose": ["yaw", "pitch", "roll"],
    "expression": ["mouth_open", "smile", "eye_open"],
}

# Generic 3-D face (mm), x to the image's right, y down, z away from the camera:
# nose tip, chin, outer eye corners, mouth corners (dlib indices 30, 8, 36, 45, 48, 54).
_MODEL_POINTS = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.0, 330.0, 65.0],
        [-225.0, -170.0, 135.0],
        [225.0, -170.0, 135.0],
        [-150.0, 150.0, 125.0],
        [150.0, 150.0, 125.0],
    ]
)
_LANDMARK_IDS = [30, 8, 36, 45, 48, 54]


def attribute_names(groups: list[str] | str) -> list[str]:
    if isinstance(groups, str):
        groups = [g for g in groups.split(",") if g]
    names = []
    for g in groups:
        if g not in ATTRIBUTE_GROUPS:
            raise ValueError(f"unknown attribute group {g!r}; choose from {sorted(ATTRIBUTE_GROUPS)}")
        names += ATTRIBUTE_GROUPS[g]
    return names


def head_pose(landmarks68: np.ndarray, image_size: tuple[int, int] | None = None) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 68 landmarks. The camera looks at the face:
    principal point at the landmarks' centre, focal length a fixed multiple of the
    face's size, so that a face off the photo's centre, or the same face in an
    aligned crop, gets the same pose."""
    centre = landmarks68.mean(axis=0)
    focal = 6.0 * np.linalg.norm(landmarks68[36] - landmarks68[45])  # ~ a portrait lens at arm's length
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], dtype=np.float64)
    image_points = landmarks68[_LANDMARK_IDS].astype(np.float64)
    ok, rvec, _ = cv2.solvePnP(_MODEL_POINTS, image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return float("nan"), float("nan"), float("nan")
    rot, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll) Ry(yaw) Rx(pitch) with image axes (x right, y down, z forward).
    yaw = np.degrees(np.arcsin(-np.clip(rot[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    # Sign conventions of the module docstring (y is down in the image).
    return float(-yaw), float(-pitch), float(-roll)


def expression(landmarks68: np.ndarray) -> tuple[float, float, float]:
    """(mouth_open, smile, eye_open), scale-free."""
    left_eye, right_eye = landmarks68[36:42], landmarks68[42:48]
    iod = np.linalg.norm(left_eye.mean(0) - right_eye.mean(0)) + 1e-6
    mouth_open = np.linalg.norm(landmarks68[62] - landmarks68[66]) / iod
    smile = np.linalg.norm(landmarks68[48] - landmarks68[54]) / iod

    def eye_aspect(e):  # (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)
        return (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * np.linalg.norm(e[0] - e[3]) + 1e-6)

    eye_open = (eye_aspect(left_eye) + eye_aspect(right_eye)) / 2
    return float(mouth_open), float(smile), float(eye_open)


class AttributeEstimator:
    """Pose and expression of faces in photos or in canonical crops."""

    def __init__(self, groups: list[str] | str = ("pose", "expression"), aligner: FaceAligner | None = None):
        self.names = attribute_names(list(groups) if not isinstance(groups, str) else groups)
        self.aligner = aligner or FaceAligner()

    def from_landmarks(self, landmarks68: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        values = dict(zip(ATTRIBUTE_GROUPS["pose"], head_pose(landmarks68, image_size)))
        values.update(zip(ATTRIBUTE_GROUPS["expression"], expression(landmarks68)))
        return np.array([values[n] for n in self.names], dtype=np.float32)

    def estimate_aligned(self, canonical: np.ndarray) -> np.ndarray:
        """Attributes of a canonical crop (no detection); small crops are upscaled first."""
        if canonical.shape[0] < 128:
            canonical = cv2.resize(canonical, (256, 256), interpolation=cv2.INTER_CUBIC)
        lm = self.aligner.landmarks_aligned(canonical, points=68)
        return self.from_landmarks(lm, canonical.shape[:2])

    def estimate_photo(self, photo: np.ndarray, name: str = "image") -> np.ndarray:
        from id3pm.alignment import NoFaceError

        boxes = self.aligner.detect(photo)
        if not boxes:
            raise NoFaceError(f"{name}: no face found")
        return self.from_landmarks(self.aligner.landmarks(photo, boxes[0], points=68), photo.shape[:2])
