"""`id3pm invert` end to end with the real dlib black box and a (random) 128-d model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from conftest import untrained_dlib_model

from id3pm.cli import main
from id3pm.modeldir import save_model_dir
from id3pm.models import IDConditionedUNet


@pytest.fixture(scope="module")
def dlib_model(tmp_path_factory):
    return untrained_dlib_model(tmp_path_factory.mktemp("m") / "model")[0]


def test_invert_photos_skips_bad_ones_and_reports_distances(dlib_model, tmp_path):
    astro = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(astro)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(blank)
    out = tmp_path / "out"
    code = main(["invert", str(astro), str(blank), str(tmp_path / "gone.jpg"), "--model", str(dlib_model),
                 "-n", "2", "--steps", "3", "--out", str(out), "--device", "cpu"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert [i["identity"] for i in result["items"]] == ["astronaut"]
    assert any("blank.png: no face found" in s for s in result["skipped"])
    assert any("gone.jpg: no such file" in s for s in result["skipped"])
    d = result["items"][0]["identity_distance"]
    assert len(d) == 2 and all(x > 0 for x in d)  # measured with dlib on the generated crops
    assert result["synthetic"] is True and (out / "astronaut" / "seed_0000.png").exists()


def test_invert_with_nothing_usable_fails_clearly(dlib_model, tmp_path, capsys):
    code = main(["invert", str(tmp_path / "none.png"), "--model", str(dlib_model), "--out", str(tmp_path / "o")])
    assert code == 1 and "none.png: no such file" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    vec = tmp_path / "v.npy"
    np.save(vec, np.zeros(128, np.float32))
    assert main(["sample", "--vectors", str(vec), "--model", str(tmp_path / "nope")]) == 2
    assert "not an id3pm model folder" in capsys.readouterr().err


def test_a_folder_is_expanded_into_its_images(dlib_model, tmp_path):
    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main(["invert", str(tmp_path / "photos"), "--model", str(dlib_model), "-n", "1", "--steps", "2",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert [i["identity"] for i in result["items"]] == ["astronaut"] and result["skipped"] == []


@pytest.mark.parametrize("flags, message", [(["-n", "0"], "must be at least 1"), (["--steps", "x"], "not an integer"),
                                            (["--guidance", "nan"], "finite number")])
def test_bad_numeric_flags_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["invert", "face.jpg", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err


def test_version_and_help_with_defaults_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys, contextlib, io\nfrom id3pm.cli import build_parser\n"
            "p = build_parser()\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n    p.parse_args(['invert', '--help'])\n"
            "print('torch' in sys.modules, 'default: 25' in buf.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # help is fast (no torch import) and lists defaults
    with pytest.raises(SystemExit):
        main(["--version"])


def test_help_shows_each_default_once_and_no_empty_ones(capsys):
    with pytest.raises(SystemExit):
        main(["invert", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: the shipped reference model)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("(default: 25)") >= 1 and "(default: 2.0)" in text


def test_train_help_names_every_network_preset(capsys):
    from id3pm.modeldir import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    preset_help = text.rsplit("--preset PRESET", 1)[1].split("--", 1)[0]  # the option, not the usage line
    assert all(name in preset_help for name in PRESETS), preset_help


def untrained_upsampler(path, cond_size: int, encoder: str, id_dim: int):
    """An (untrained) one-pass upsampler cond_size -> 2 x cond_size conditioned on id_dim-d vectors of encoder."""
    torch.manual_seed(0)
    net = IDConditionedUNet(sample_size=2 * cond_size, block_out_channels=(32, 64), layers_per_block=1,
                            norm_num_groups=8, attention_resolutions=(), mid_attention=False, out_channels=3,
                            id_dim=id_dim, extra_cond_channels=3, use_level_embedding=True)
    info = {"task": "superres", "image_size": 2 * cond_size, "cond_size": cond_size, "objective": "regression",
            "residual": 3.0, "diffusion": {"schedule": "cosine", "num_timesteps": 1000}, "encoder": {"name": encoder},
            "id_dim": id_dim}
    return save_model_dir(path, net, info)


def test_a_shipped_upsampler_that_fits_is_the_default_and_none_turns_it_off(dlib_model, tmp_path, monkeypatch):
    """#26 part 3: with an upsampler in weights/ whose input side is the model's output side (and
    whose y is the model's encoder's), invert writes the 32 px samples AND the upscaled ones by
    default, and the Python API upscales by default; `--upscale none` turns it off. A shipped
    upsampler that does not fit (another input side, another encoder's y) is not used."""
    import id3pm.superres as superres
    from id3pm.pipeline import ID3PMPipeline

    shipped = {"superres": untrained_upsampler(tmp_path / "sr", 32, "dlib", 128)}
    monkeypatch.setattr(superres, "shipped_path", lambda task="base": shipped.get(task))
    astro = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(astro)
    args = ["invert", str(astro), "--model", str(dlib_model), "-n", "1", "--steps", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "on")]) == 0
    result = json.loads((tmp_path / "on" / "results.json").read_text())
    assert result["upscale"].startswith("regression super-resolution 32->64")
    assert Image.open(tmp_path / "on" / "astronaut" / "seed_0000.png").size == (32, 32)  # the 32 px sample too
    assert Image.open(tmp_path / "on" / "upscaled" / "astronaut" / "seed_0000.png").size == (64, 64)
    assert main([*args, "--out", str(tmp_path / "off"), "--upscale", "none"]) == 0
    assert json.loads((tmp_path / "off" / "results.json").read_text())["upscale"] is None
    assert not (tmp_path / "off" / "upscaled").exists()
    assert main([*args, "--out", str(tmp_path / "q"), "--queries", "2"]) == 0  # the best of the queries, enlarged
    assert json.loads((tmp_path / "q" / "results.json").read_text())["upscale"].startswith("regression super-res")
    assert Image.open(tmp_path / "q" / "upscaled" / "astronaut" / "seed_0000.png").size == (64, 64)

    pipe = ID3PMPipeline.from_pretrained(dlib_model, device="cpu")
    v = np.random.default_rng(0).normal(size=(1, 128)).astype(np.float32) * 0.05
    assert pipe(v, num_images_per_id=1, num_inference_steps=2).upscaled.shape == (1, 1, 64, 64, 3)
    assert pipe(v, num_images_per_id=1, num_inference_steps=2, upscale=False).upscaled is None
    assert ID3PMPipeline.from_pretrained(dlib_model, device="cpu", upscale=None).upscaler is None
    for misfit in (untrained_upsampler(tmp_path / "sr16", 16, "dlib", 128),
                   untrained_upsampler(tmp_path / "srf", 32, "faceres", 1024)):
        shipped["superres"] = misfit
        assert ID3PMPipeline.from_pretrained(dlib_model, device="cpu").upscaler is None
    shipped.pop("superres")
    assert ID3PMPipeline.from_pretrained(dlib_model, device="cpu").upscaler is None  # nothing shipped: 32 px
