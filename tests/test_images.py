"""Defensive image reading and the synthetic marking of outputs."""

import numpy as np
import pytest
from PIL import Image

from id3pm.alignment import FaceAligner, chip_transform, recrop, warp
from id3pm.images import ImageError, contact_sheet, load_image, png_bytes, png_text, save_png


def test_modes_are_converted_to_rgb(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "g.png")
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(tmp_path / "g16.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "a.png")
    for name in ("g.png", "g16.png", "a.png"):
        img = load_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_bad_inputs_name_the_item(tmp_path):
    with pytest.raises(ImageError, match="^missing.jpg: no such file$"):
        load_image("missing.jpg")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="bad.png: cannot read image"):
        load_image(tmp_path / "bad.png")
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big.png: image too large \(3000x3000"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)


def test_generated_pngs_are_marked_synthetic(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    save_png(img, tmp_path / "x.png", {"seed": 3})
    text = png_text(str(tmp_path / "x.png"))
    assert text["Synthetic"] == "true" and "Synthetic image" in text["Description"] and '"seed": 3' in text["id3pm"]
    assert "Synthetic" not in png_text(png_bytes(img, synthetic=False))


def test_contact_sheet_layout():
    cells = [[np.full((8, 8, 3), 255, np.uint8), None], [np.zeros((8, 8, 3), np.uint8)] * 2]
    sheet = contact_sheet(cells, cell=16)
    assert sheet.shape == (32, 32, 3)
    assert sheet[20, 4].tolist() == [0, 0, 0] and sheet[4, 4].tolist() == [255, 255, 255]


def test_chip_geometry_matches_dlib_get_face_chip():
    import dlib
    from skimage import data

    img = data.astronaut()
    a = FaceAligner()
    box = a.detect(img)[0]
    lm = a.landmarks(img, box)
    shape = dlib.full_object_detection(dlib.rectangle(*map(int, box)), [dlib.point(int(x), int(y)) for x, y in lm])
    ref = dlib.get_face_chip(img, shape, size=150, padding=0.25).astype(float)
    mine = warp(img, chip_transform(lm, 150, 0.25), 150).astype(float)
    assert np.abs(ref - mine)[10:-10, 10:-10].mean() < 1.5  # same geometry, interpolation differs slightly
    # recrop: the canonical crop at another padding equals a chip cut with that padding
    wide = warp(img, chip_transform(lm, 200, 0.5), 200).astype(float)
    from_canonical = recrop(warp(img, chip_transform(lm, 256, 0.25), 256), 0.5, 200).astype(float)
    assert np.abs(wide - from_canonical)[40:-40, 40:-40].mean() < 3


def test_a_photo_stored_sideways_with_an_exif_orientation_is_loaded_upright():
    import io

    from PIL import Image

    from id3pm.images import load_image

    upright = np.zeros((40, 20, 3), np.uint8)  # tall, with a red top
    upright[:10] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a camera writes: 20 x 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif.tobytes())
    img = load_image(buf.getvalue(), name="sideways")
    assert img.shape == (40, 20, 3)
    assert img[:10].mean(axis=(0, 1))[0] > 200 and img[30:].mean() < 30
