"""The identity-disjoint yardstick: pairs dealt from identity labels, and the evaluations
it runs (plumbing with real dlib vectors of astronaut variants and an untrained model)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from conftest import untrained_dlib_model

from id3pm.cli import main
from id3pm.data.prepare import split_of
from id3pm.evaluation.verification import identity_pairs, read_pair_csv, write_pair_csv

ROOT = Path(__file__).resolve().parents[1]


def test_identity_pairs_keep_each_person_in_one_fold(tmp_path):
    rng = np.random.default_rng(0)
    people = rng.integers(0, 60, 300)
    keys = [f"{i:04d}.jpg" for i in range(300)]
    pairs = identity_pairs(keys, list(people), folds=10, seed=5)
    person = dict(zip(keys, people))
    folds_of: dict = {}
    for p in pairs:
        for k in (p.a, p.b):
            folds_of.setdefault(person[k], set()).add(p.fold)
        assert (person[p.a] == person[p.b]) == p.same and p.a != p.b
    assert all(len(f) == 1 for f in folds_of.values())  # no person in two folds
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    for k in range(10):  # as many negatives as positives in every fold
        assert (same & (folds == k)).sum() == (~same & (folds == k)).sum() > 0
    per_person = np.bincount([people[int(p.a[:4])] for p in pairs if p.same], minlength=60)
    assert per_person.max() == 3  # a person with many photos gives at most 3 positive pairs
    assert identity_pairs(keys, list(people), folds=10, seed=5) == pairs  # seeded
    assert identity_pairs(keys, list(people), folds=10, seed=6) != pairs
    write_pair_csv(pairs, tmp_path / "p.csv")
    assert read_pair_csv(tmp_path / "p.csv") == pairs
    few = identity_pairs(["a", "b", "c", "d", "e", "f", "g", "h"], [1, 1, 2, 2, 3, 3, 4, 4], folds=10)
    assert sorted({p.fold for p in few}) == [0, 1]  # 4 people: two folds of two


def people_labels(n_held: int, n_train: int) -> tuple[list[int], list[int]]:
    """Identity numbers that `--split-by identity --holdout 0.5` holds out / trains on."""
    held = [i for i in range(200) if split_of(f"identity:{i}", 0.5) == "holdout"][:n_held]
    train = [i for i in range(200) if split_of(f"identity:{i}", 0.5) == "train"][:n_train]
    return held, train


def test_yardstick_end_to_end(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    astro = skdata.astronaut()
    held, train = people_labels(4, 2)
    labels = [held[0]] * 3 + [held[1]] * 2 + [held[2]] * 2 + [held[3]] * 2 + [train[0]] * 2 + [train[1]] * 2
    for i in range(len(labels)):
        shifted = np.roll(astro, 9 * i, axis=1)
        Image.fromarray(np.ascontiguousarray(shifted if i % 2 else shifted[:, ::-1])).save(src / f"a{i:02d}.png")
    (tmp_path / "ids.csv").write_text("file,identity\n" + "".join(f"a{i:02d}.png,{p}\n" for i, p in enumerate(labels)))
    assert main(["prepare", str(src), str(tmp_path / "prep"), "--sizes", "32", "--workers", "1", "--split-by",
                 "identity", "--holdout", "0.5", "--metadata", f"csv:{tmp_path / 'ids.csv'}"]) == 0
    orl = tmp_path / "orl"  # a pairs folder as ../shared/data/orl
    orl.mkdir()
    for i in range(4):
        Image.fromarray(np.roll(astro, 12 * i, axis=0)).save(orl / f"o{i}.png")
    (orl / "pairs.csv").write_text("path_a,path_b,same,fold\no0.png,o1.png,1,0\no2.png,o3.png,0,0\n"
                                   "o1.png,o2.png,1,1\no3.png,o0.png,0,1\n")
    yale = tmp_path / "yale"  # a broken set: its pairs are all of one person
    yale.mkdir()
    (yale / "pairs.csv").write_text("path_a,path_b,same,fold\no0.png,o1.png,1,0\no1.png,o2.png,1,1\n")
    model = untrained_dlib_model(tmp_path / "model")[0]
    out = tmp_path / "yard"
    code = main(["yardstick", "--model", f"untrained={model}", "--celeba", str(tmp_path / "prep"), "--orl", str(orl), "--yale", str(yale),
                 "--train-data", str(tmp_path / "prep"), "--limit", "4", "--steps", "2", "--guidance", "1",
                 "--independent", "", "--diversity-ids", "2", "--diversity-samples", "3", "--device", "cpu",
                 "--out", str(out)])
    assert code == 1  # a set failed; the others were measured and reported
    table = json.loads((out / "yardstick.json").read_text())
    assert list(table["failed_sets"]) == ["yale"] and "same-person pairs" in table["failed_sets"]["yale"]
    assert "Not measured: yale" in (out / "yardstick.md").read_text()
    rows = table["rows"]
    assert {"untrained s=1", "nearest neighbour", "real (original crop)", "real photos", "real photos of one person"} <= set(rows)
    assert rows["real (original crop)"]["orl.acc.conditioning"] is not None  # the 32 px ceiling on pairs too
    for column in ("celeba.sar1.conditioning", "celeba.acc.conditioning", "celeba.acc_real.conditioning",
                   "celeba.sar2.conditioning", "orl.acc.conditioning", "orl.acc_real.conditioning"):
        assert rows["untrained s=1"][column] is not None, column
    # the pairs come from the held-out people only, and each fold keeps its people
    pairs = read_pair_csv(out / "celeba_pairs.csv")
    person = dict((f"a{i:02d}.png", p) for i, p in enumerate(labels))
    assert {person[k] for p in pairs for k in (p.a, p.b)} == set(held)
    m = json.loads((out / "celeba" / "metrics.json").read_text())
    # retrieval from the training people finds the astronaut again (all labels are one real face)
    assert m["identity"]["nearest neighbour"]["conditioning"]["mean"] < 0.45
    # type-I: 9 held-out crops; pairs of one person's photos are not impostor pairs: 36 - 3 - 1 - 1 - 1
    sar = m["sar_type1"]["untrained s=1"]["conditioning"]["fmr=0.01"]
    assert sar["n"] == 4 and sar["impostor_pairs"] == 30
    spread = m["diversity"]["real photos of one person"]
    assert spread["pose_deg"]["mean"] >= 0 and spread["one_minus_ms_ssim"]["mean"] > 0
    assert 0 < spread["one_minus_ms_ssim_grey"]["mean"] <= 1
    assert "## celeba" in (out / "yardstick.md").read_text() and (out / "orl" / "report.md").exists()
    # the training log's row: CelebA accuracy at real-pair thresholds first, dlib / faceres ("-": not measured)
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "yardstick_row.py"), str(out / "yardstick.json"),
                              "--method", "untrained s=1", "--label", "period 0"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    acc = rows["untrained s=1"]["celeba.acc_real.conditioning"]
    assert printed[2].startswith(f"| period 0 | untrained s=1 | {100 * acc:.1f} / - |")
