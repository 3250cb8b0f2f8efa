"""Head pose and expression from landmarks: rotation moves roll, mirroring flips yaw and roll."""

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from id3pm.alignment import FaceAligner
from id3pm.attributes import AttributeEstimator, attribute_names


@pytest.fixture(scope="module")
def est():
    return AttributeEstimator()


def rotate(img, degrees):
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)  # positive: counter-clockwise
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def test_roll_follows_rotation(est):
    img = skdata.astronaut()
    base = est.estimate_photo(img)
    for deg in (-15, 10, 20):
        roll = est.estimate_photo(rotate(img, deg))[2]
        assert roll - base[2] == pytest.approx(deg, abs=4)


def test_mirroring_flips_yaw_and_roll(est):
    img = skdata.astronaut()
    a = est.estimate_photo(img)
    b = est.estimate_photo(np.ascontiguousarray(img[:, ::-1]))
    assert b[0] == pytest.approx(-a[0], abs=3) and b[2] == pytest.approx(-a[2], abs=3)
    assert b[1] == pytest.approx(a[1], abs=3)  # pitch does not change
    np.testing.assert_allclose(b[3:], a[3:], atol=0.1)  # nor does the expression (landmark noise ~0.07)


def test_aligned_crops_give_the_same_attributes(est):
    img = skdata.astronaut()
    crop = FaceAligner().align(img).crop
    a, b = est.estimate_photo(img), est.estimate_aligned(crop)
    assert abs(a[0] - b[0]) < 6 and abs(a[1] - b[1]) < 6  # the crop removes the roll by design
    assert abs(b[2]) < 4
    np.testing.assert_allclose(a[3:], b[3:], atol=0.08)


def test_attribute_names():
    assert attribute_names("pose,expression") == ["yaw", "pitch", "roll", "mouth_open", "smile", "eye_open"]
    with pytest.raises(ValueError, match="unknown attribute group 'age'"):
        attribute_names(["age"])
