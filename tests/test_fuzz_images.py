"""Small versions of the image decoding fuzz (tests/fuzz_images.py; the large one runs in
scripts/reliability.py): fuzzed PNG, JPEG, WebP, GIF and TIFF through load_image, the HTTP
input decode_image and `id3pm prepare`, with no crash, hang or blow-up in memory; and the
bugs it found, one test each."""

import base64
import io

import numpy as np
import pytest
from fuzz_images import (
    FORMATS,
    Sandbox,
    Tiff,
    encoded,
    fuzz_cases,
    http_image_fuzz,
    image_fuzz,
    judge,
    prepare_image_fuzz,
)
from PIL import Image

from id3pm import images
from id3pm.images import ImageError, load_image


def test_load_image_decodes_or_refuses_150_fuzzed_images_in_one_line(tmp_path):
    row = image_fuzz(tmp_path, 150, seed=1)
    assert row.lost == 0 and row.survived == 150, row.note


def test_http_input_decodes_or_refuses_30_fuzzed_base64_images(tmp_path):
    row = http_image_fuzz(tmp_path, 30, seed=2)
    assert row.lost == 0 and row.survived == 30, row.note


def test_prepare_writes_a_row_or_one_skip_line_for_each_of_20_fuzzed_files(tmp_path):
    row = prepare_image_fuzz(tmp_path, 20, seed=3)
    assert row.lost == 0 and row.survived == 20, row.note


def test_cases_cover_every_format_and_are_reproducible():
    cases = list(fuzz_cases(60, seed=4))
    assert {c.fmt for c in cases} == set(FORMATS)
    assert [c.data for c in cases] == [c.data for c in fuzz_cases(60, seed=4)]
    assert len({c.name for c in cases}) == 60


@pytest.mark.parametrize("what,verdict,why", [
    ("segfault", "crash", "died (SIGSEGV)"),
    ("spin", "hang", "more than 1 s of CPU"),
    ("allocate", "memory", "MemoryError"),
    ("two lines", "crash", "not one line"),
    ("escape", "crash", "escaped as KeyError"),
])
def test_the_sandbox_sees_crashes_hangs_and_memory_blowups(tmp_path, what, verdict, why):
    with Sandbox("probe", tmp_path / "probe.log", cpu_seconds=1) as box:
        got = judge(box.run(b"", what, 100), what, 100, cpu_seconds=1)
        assert got[0] == verdict and why in got[1], got
        assert judge(box.run(b"", "fine", 100), "fine", 100) == ("ok", "")  # restarted after a death


# -- bugs the fuzz found --------------------------------------------------------------------------
def test_grey_tiff_with_premultiplied_alpha_is_read_not_a_valueerror():
    """ExtraSamples=1 on a grey TIFF opens as mode "La", which Pillow converts only to LA:
    load_image raised a bare ValueError (HTTP 500, an 'unexpected' skip in prepare)."""
    from id3pm.serving.inputs import decode_image

    grey_alpha = np.stack([np.full((4, 5), 100, np.uint8), np.full((4, 5), 255, np.uint8)], -1)
    data = Tiff().set_tag(encoded(Image.fromarray(grey_alpha, "LA"), "TIFF"), 338, 1)
    assert Image.open(io.BytesIO(data)).mode == "La"
    img = load_image(data, name="la.tif")
    assert img.shape == (4, 5, 3) and (img == 100).all()
    assert np.array_equal(decode_image(base64.b64encode(data).decode(), "la.tif", 1000), img)


def test_signed_32bit_grey_is_scaled_with_negative_values_black():
    """Negative values of mode "I" were cast to uint8 after scaling and wrapped around to white."""
    data = encoded(Image.fromarray(np.array([[-5, 0, 500, 1000]], np.int32)), "TIFF")
    assert load_image(data, name="i.tif")[0, :, 0].tolist() == [0, 0, 127, 255]


def test_16bit_images_scale_by_their_maximum_and_all_zero_is_black():
    grey16 = encoded(Image.fromarray(np.array([[0, 1000, 2000]], np.uint16)), "PNG")
    assert load_image(grey16, name="g.png")[0, :, 0].tolist() == [0, 127, 255]
    zero = load_image(encoded(Image.fromarray(np.zeros((3, 4), np.uint16)), "PNG"), name="z.png")
    assert zero.shape == (3, 4, 3) and not zero.any()


class Raises:
    """Stands in for a function and raises the given exception."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


def test_failures_after_decoding_are_one_line_image_errors(monkeypatch):
    """Converting to RGB ran outside load_image's handler: a MemoryError or a mode Pillow
    cannot convert escaped as itself instead of an ImageError naming the item."""
    data = encoded(Image.new("RGB", (4, 3)), "PNG")
    monkeypatch.setattr(images, "to_rgb", Raises(MemoryError()))
    with pytest.raises(ImageError, match=r"^x.png: image too large \(4x3\) to convert in the memory available$"):
        load_image(data, name="x.png")
    monkeypatch.setattr(images, "to_rgb", Raises(ValueError("conversion from Xy\nnot supported")))
    with pytest.raises(ImageError, match=r"^x.png: cannot convert image mode RGB to RGB \(ValueError: "
                                         r"conversion from Xy not supported\)$"):
        load_image(data, name="x.png")


def test_decoder_errors_are_one_line_and_memory_errors_say_too_large(monkeypatch):
    data = encoded(Image.new("RGB", (4, 3)), "PNG")
    monkeypatch.setattr(Image.Image, "load", Raises(OSError("broken data\nat byte 7")))
    with pytest.raises(ImageError, match=r"^x.png: cannot read image \(OSError: broken data at byte 7\)$"):
        load_image(data, name="x.png")
    monkeypatch.setattr(Image.Image, "load", Raises(MemoryError()))
    with pytest.raises(ImageError, match=r"^x.png: image too large to decode in the memory available$"):
        load_image(data, name="x.png")
