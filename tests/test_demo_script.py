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
