"""scripts/demo.py's messages where faceres is missing (a fresh clone before `make models`)."""

import importlib.util
from pathlib import Path

import numpy as np

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("id3pm_demo_script", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_faceres_gives_one_line_naming_make_models_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ID3PM_HUMAN_MODELS", str(tmp_path / "no-models-here"))
    encoder, why = load_demo().independent_encoder()
    assert encoder is None
    assert "\n" not in why and why.count("make models") == 1 and "faceres.json" in why


def test_unmeasured_distances_are_a_dash_not_nan():
    demo = load_demo()
    assert demo.distance_text(np.nan) == "-"
    assert demo.distance_text(0.4567) == "0.46"


def test_the_demo_shows_both_sizes_with_the_shipped_upsampler(tmp_path, monkeypatch, capsys):
    """#26: the shipped upsampler fits a 32 px dlib model, so the demo writes a 128 px row
    under the face's 32 px row, its distances in results.json and a verdict line per size."""
    import json

    from conftest import untrained_dlib_model
    from PIL import Image
    from skimage import data as skdata

    demo = load_demo()
    monkeypatch.setattr(demo, "GUIDANCE", (2.0,))
    monkeypatch.setattr(demo, "SAMPLES", 2)
    monkeypatch.setattr(demo, "demo_faces", lambda: {"astronaut": skdata.astronaut()})
    model = untrained_dlib_model(tmp_path / "model")[0]
    assert demo.run(tmp_path / "out", smoke_steps=0, model=str(model)) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["faces"]) == {"astronaut", "astronaut upscaled"}
    upscaled = report["faces"]["astronaut upscaled"]["s=2"]
    assert upscaled["upscaler"].startswith("regression super-resolution 32->128") and len(upscaled["dlib"]) == 2
    assert Image.open(tmp_path / "out" / "sheet.png").height >= 2 * 128  # a row per size, at the upsampler's pixels
    printed = capsys.readouterr().out
    assert "astronaut: dlib" in printed and "astronaut at 128 px: dlib" in printed
