"""Training: exact resume after an interruption, crash-safe checkpoints, batch order."""

import json

import time

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_tiny_prepared
from safetensors.torch import load_file

from id3pm.checkpoint import find_checkpoint
from id3pm.training import BatchOrder, Budget, TrainConfig, train, update_ema


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_tiny_prepared(tmp_path_factory.mktemp("data"), n=6, size=8)[0]


def _weights(run):
    ck = run / "checkpoint"
    return load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")


def test_resume_after_interruption_gives_the_same_weights(prepared, tmp_path):
    kw = dict(TINY_TRAIN, data=str(prepared), save_every=6, model={**TINY_TRAIN["model"], "dropout": 0.1})
    train(TrainConfig(out=str(tmp_path / "straight"), max_steps=12, **kw))
    train(TrainConfig(out=str(tmp_path / "resumed"), max_steps=6, **kw))  # "killed" after its checkpoint at 6
    train(TrainConfig(out=str(tmp_path / "resumed"), max_steps=12, **kw))
    for a, b in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed")):
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 12 and state["images_seen"] == 12 * TINY_TRAIN["batch_size"]
    info = json.loads((tmp_path / "resumed" / "model" / "id3pm.json").read_text())
    assert info["training"]["steps"] == 12 and info["training"]["forward_gflops_per_image"] > 0


def test_a_crash_between_checkpoint_renames_keeps_the_old_one(prepared, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), data=str(prepared), max_steps=3, save_every=3, **{k: v for k, v in TINY_TRAIN.items()}))
    (run / "checkpoint").rename(run / "checkpoint.old")  # as if killed after the first rename
    (run / "checkpoint.tmp").mkdir()  # and a half-written new one
    assert find_checkpoint(run / "checkpoint") == run / "checkpoint.old"
    train(TrainConfig(out=str(run), data=str(prepared), max_steps=4, save_every=3, **TINY_TRAIN))
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4


def test_time_budget_stops_training(prepared, tmp_path):
    """The budget (0.12 s) runs out during setup: the run still makes one step, exports, stops."""
    result = train(TrainConfig(out=str(tmp_path / "r"), data=str(prepared), max_steps=10_000, max_minutes=0.002,
                               save_every=0, **TINY_TRAIN))
    assert 0 < result["step"] < 10_000
    assert (tmp_path / "r" / "model" / "id3pm.json").exists()


def test_the_time_budget_counts_from_the_start_of_the_run_not_the_first_step():
    state = {"step": 7, "train_seconds": 0.0}
    late = Budget(100, 1.0, state, started=time.time() - 61)  # setup took the whole minute
    assert not late.exhausted()  # but no step yet in this process
    state["step"] = 8
    assert late.exhausted() and "step 8" in late.reason
    assert not Budget(100, 1.0, state, started=time.time() - 30).exhausted()
    assert Budget(8, 0.0, state).exhausted()  # max_steps reached; no time limit


def test_batch_order_covers_each_epoch_once_and_splits_across_processes():
    order = BatchOrder(n=10, batch=4, seed=3)
    seen = np.concatenate([order.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    parts = np.concatenate([order.indices(2, rank=r, world=2) for r in range(2)])
    assert (parts == order.indices(2)).all()
    assert (BatchOrder(10, 4, 3).indices(4) == order.indices(4)).all()


def test_regression_baseline_decoder_learns_its_images(tmp_path):
    """The paper's Eq. 4 baseline, trained with the same command: g(y) -> x by MSE."""
    from conftest import distinct_images, pooled

    from id3pm.pipeline import ID3PMPipeline

    prepared, images, vectors = make_tiny_prepared(tmp_path / "d", n=4, size=8)
    train(TrainConfig(out=str(tmp_path / "reg"), data=str(prepared), task="regression", max_steps=300, save_every=300,
                      **TINY_TRAIN))
    pipe = ID3PMPipeline.from_pretrained(tmp_path / "reg" / "model", device="cpu")
    assert pipe.info["task"] == "regression"
    out = pipe(vectors, num_images_per_id=2, seed=0).images
    assert np.array_equal(out[:, 0], out[:, 1])  # one-to-one: no diversity at all
    targets = pooled(np.stack(distinct_images(4, 8)))
    for i in range(4):
        assert ((targets - pooled(out[i, 0])) ** 2).mean(axis=(1, 2, 3)).argmin() == i


def test_accelerate_launch_with_two_processes(prepared, tmp_path):
    """The multi-GPU path (DDP via `accelerate launch`), exercised with two CPU processes."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "id3pm.cli", "train", str(prepared),
           str(tmp_path / "run"), "--preset", "tiny", "--size", "8", "--model", json.dumps(TINY_TRAIN["model"]),
           "--batch-size", "8", "--max-steps", "4", "--save-every", "2", "--sample-every", "0", "--log-every", "2",
           "--progress", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["images_seen"] == 32  # the global batch, split over 2 processes
    assert (tmp_path / "run" / "model" / "id3pm.json").exists()


def test_ema_update_matches_hand_computed_values_with_its_warm_up():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = {"weight": torch.zeros(1, 1)}
    update_ema(ema, model, decay=0.999, step=1)  # warm-up: d = (1 + 1) / (10 + 1)
    assert ema["weight"].item() == pytest.approx(1 - 2 / 11)
    update_ema(ema, model, decay=0.5, step=100)  # capped: d = min(0.5, 101 / 110)
    assert ema["weight"].item() == pytest.approx(0.5 * (1 - 2 / 11) + 0.5)


def test_condition_dropout_is_ten_percent_per_sample_and_reaches_the_linear_as_zeros():
    from id3pm.diffusion import GaussianDiffusion, make_betas
    from id3pm.models import IDConditionedUNet
    from id3pm.training import StepRandom, step_loss

    model = IDConditionedUNet(sample_size=8, id_dim=4, **{**TINY_TRAIN["model"], "layers_per_block": 1,
                                                          "norm_num_groups": 8, "attention_head_dim": 32})
    seen = []
    model.id_embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    diffusion = GaussianDiffusion(make_betas("linear", 50))
    cfg = TrainConfig(data="", out="", cond_drop=0.1)
    batch = {"image": torch.zeros(64, 3, 8, 8), "id_vector": torch.randn(64, 4).abs() + 0.1}
    with torch.no_grad():
        for step in range(100):
            step_loss(cfg, model, diffusion, batch, StepRandom(0, step, 0, "cpu"), {})
    inputs = torch.stack(seen)  # (steps, batch, id_dim)
    dropped = (inputs == 0).all(dim=2)
    assert ((inputs != 0).all(dim=2) | dropped).all()  # a row is either the vector or all zeros
    assert abs(dropped.float().mean().item() - 0.1) < 0.012  # 6,400 draws: 3.2 sigma
    per_step = dropped.float().mean(dim=1)
    assert (per_step > 0).sum() > 90 and (per_step < 1).all()  # per sample: batches are mixed, never all-dropped


def test_attributes_outside_named_groups_are_each_their_own_dropout_group():
    from id3pm.training import StepRandom, attribute_dropout_mask, attribute_groups

    names = ["yaw", "pitch", "roll", "smile", "meta:age", "meta:gender"]
    assert attribute_groups(names) == [[0, 1, 2], [3], [4], [5]]
    mask = torch.cat([attribute_dropout_mask(names, 256, 0.3, StepRandom(0, s, 0, "cpu"), "cpu") for s in range(4)])
    assert (mask[:, 0] == mask[:, 2]).all()  # pose dropped as a whole
    for col in (3, 4, 5):
        assert 0.2 < 1 - mask[:, col].mean().item() < 0.4  # meta columns are dropped too (were never)
    assert (mask[:, 4] != mask[:, 5]).any()  # independently


def test_budget_predicts_the_step_at_which_the_time_budget_stops_the_run():
    state = {"step": 100, "train_seconds": 0.0}
    budget = Budget(max_steps=10_000, max_minutes=1.0, state=state)
    assert budget.expected_steps() == 10_000  # no rate measured yet
    budget.start -= 6.0  # 6 s in, 60 steps done: 10 steps/s for the 54 s left
    budget.deadline -= 6.0
    state["step"] = 160
    assert budget.expected_steps() == pytest.approx(160 + 540, abs=2)
    assert not budget.exhausted()
    budget.start -= 60
    budget.deadline -= 60
    assert budget.exhausted() and "time budget" in budget.reason


def test_bf16_training_on_the_cpu_lowers_the_loss_and_round_trips(prepared, tmp_path):
    # an fp32 run in the same process first (a notebook; the test process on an AVX2 CPU, where
    # "auto" is fp32): accelerate's global state must not keep the first run's precision
    train(TrainConfig(out=str(tmp_path / "fp32"), data=str(prepared), max_steps=1, save_every=1,
                      **{**TINY_TRAIN, "mixed_precision": "no"}))
    run = tmp_path / "bf16"
    train(TrainConfig(out=str(run), data=str(prepared), max_steps=120, save_every=120,
                      **{**TINY_TRAIN, "mixed_precision": "bf16", "log_every": 20}))
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0], losses
    from id3pm.modeldir import load_model_dir

    model, info = load_model_dir(run / "model")
    assert info["training"]["mixed_precision"] == "bf16"
    ema = load_file(run / "checkpoint" / "ema.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v.float(), ema[k]), k


@pytest.mark.slow
def test_compiled_training_keeps_plain_keys_in_ema_and_export(prepared, tmp_path):
    pytest.importorskip("torch._inductor")
    run = tmp_path / "compiled"
    try:
        train(TrainConfig(out=str(run), data=str(prepared), max_steps=4, save_every=4,
                          **{**TINY_TRAIN, "compile": True}))
    except Exception as err:  # inductor needs a C++ compiler on the CPU
        if "compiler" in str(err).lower() or "InvalidCxxCompiler" in type(err).__name__:
            pytest.skip(f"torch.compile cannot build CPU kernels here: {err}")
        raise
    ema = load_file(run / "checkpoint" / "ema.safetensors")
    weights = load_file(run / "checkpoint" / "model.safetensors")
    assert ema.keys() == weights.keys() and not any("_orig_mod" in k for k in ema)
    assert any(not torch.equal(ema[k], weights[k]) for k in ema)  # the EMA really follows the trained weights


def test_id_scale_makes_the_average_vector_entry_of_order_one(tmp_path):
    # dlib vectors have norm ~0.9 in 128-d (entries ~0.08); another encoder's may be 30.
    # Whatever the norm, y * id_scale must have RMS entry 1 on average over the training set.
    from id3pm.data import PreparedDataset, TrainingSet
    from id3pm.training import build_model

    prepared, _, vectors = make_tiny_prepared(tmp_path, n=4, size=8, dim=8)
    data = PreparedDataset(prepared)
    for factor in (0.01, 50.0):  # rescale the stored vectors: the scale must follow
        train_set = TrainingSet(data, 8, "train")
        train_set.vectors = train_set.vectors * factor
        model, info = build_model(TrainConfig(data="", out="", size=8, **{k: v for k, v in TINY_TRAIN.items()
                                                                          if k in ("preset", "model")}), data, train_set)
        expected = np.sqrt(8) / np.linalg.norm(vectors * factor, axis=1).mean()
        assert model.config.id_scale == pytest.approx(expected, rel=1e-5)
        scaled = train_set.vectors.numpy() * model.config.id_scale
        assert np.sqrt((scaled**2).mean(axis=1)).mean() == pytest.approx(1.0, rel=1e-5)
        assert info["id_mean_norm"] == pytest.approx(np.linalg.norm(vectors * factor, axis=1).mean(), rel=1e-5)


def prepare_with_vectors(root, images, vectors) -> None:
    """root/prep: the 8 px images, each with its row of vectors as the black box's answer."""
    from PIL import Image

    from id3pm.data import PrepareConfig, prepare

    (root / "src").mkdir()
    keys = [f"p{i}.png" for i in range(len(images))]
    for k, img in zip(keys, images):
        Image.fromarray(img).save(root / "src" / k)
    np.savez(root / "v.npz", keys=np.array(keys), vectors=vectors)
    prepare(PrepareConfig(src=str(root / "src"), out=str(root / "prep"), holdout=0.0, workers=1, sizes=(8,),
                          encoder={"name": "table", "path": str(root / "v.npz")}, aligned=True), progress=False)


def test_a_warm_start_on_new_people_of_the_same_encoder_keeps_the_source_id_scale(trained_tiny, tmp_path):
    """New people, the same black box: the network must read y as it learned to, so the
    source's id_scale stays (an aware attacker's protected codes take their own: test_protected)."""
    from id3pm.modeldir import load_model_dir
    from id3pm.training import Trainer

    model_dir, images, vectors = trained_tiny
    source, _ = load_model_dir(model_dir)
    prepare_with_vectors(tmp_path, images, vectors[::-1] * 3)  # the same encoder, norms x 3
    trainer = Trainer(TrainConfig(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), init_from=str(model_dir),
                                  max_steps=1, **TINY_TRAIN))
    assert trainer.info["id_mean_norm"] == pytest.approx(3 * np.linalg.norm(vectors, axis=1).mean(), rel=1e-5)
    assert trainer.model.config.id_scale == pytest.approx(source.config.id_scale)  # not a third of it
    for k, v in source.state_dict().items():  # and every weight came along
        torch.testing.assert_close(trainer.model.state_dict()[k], v)


def test_a_warm_start_takes_dropout_from_the_run_and_every_weight_from_the_source(trained_tiny, tmp_path):
    """#24: continuing a model that under-fits without dropout. Dropout changes no weight, so
    the run's --model {"dropout": ...} applies; the source's other network arguments stay."""
    from id3pm.modeldir import load_model_dir
    from id3pm.training import Trainer

    model_dir, images, vectors = trained_tiny
    source, _ = load_model_dir(model_dir)
    prepare_with_vectors(tmp_path, images, vectors)
    settings = {**TINY_TRAIN, "model": {**TINY_TRAIN["model"], "dropout": 0.3}}
    trainer = Trainer(TrainConfig(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), init_from=str(model_dir),
                                  max_steps=1, **settings))
    assert source.config.dropout == 0.0 and trainer.model.config.dropout == 0.3
    rates = {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert 0.3 in rates  # the residual blocks' dropout layers, not only the config (attention keeps its 0)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[k], v)


def test_a_warm_start_on_another_encoders_vectors_keeps_every_weight_but_the_conditioning_layer(trained_tiny, tmp_path):
    """#25's fine-tune path: the same faces encoded by another FR model with a longer vector.
    The network comes along except the Linear that reads y (new, of the new length), and
    id_scale is this data's; the run then trains on the new vectors."""
    from id3pm.modeldir import load_model_dir
    from id3pm.training import Trainer

    model_dir, images, _ = trained_tiny
    source, _ = load_model_dir(model_dir)
    other = np.random.default_rng(7).normal(size=(4, 12)).astype(np.float32) * 5  # 12-d, not the source's 8
    prepare_with_vectors(tmp_path, images, other)
    trainer = Trainer(TrainConfig(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), init_from=str(model_dir),
                                  max_steps=5, **TINY_TRAIN))
    state = trainer.model.state_dict()
    assert state["id_embedding.weight"].shape == (source.id_embedding.out_features, 12)
    assert trainer.model.config.id_scale != pytest.approx(source.config.id_scale)  # this data's scale
    for k, v in source.state_dict().items():
        if not k.startswith("id_embedding."):
            torch.testing.assert_close(state[k], v)
    trainer.run()
    assert trainer.state["step"] == 5 and (tmp_path / "run" / "model" / "id3pm.json").exists()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_run_at_a_step_boundary_with_its_checkpoint(prepared, tmp_path, monkeypatch, capsys,
                                                                            signame):
    import os
    import signal

    from id3pm.training import Trainer

    sig = getattr(signal, signame)
    before = signal.getsignal(sig)
    step_once = Trainer.train_step

    def step_then_signal(self):
        losses = step_once(self)
        if self.state["step"] == 5:  # e.g. `kill PID`, a scheduler's preemption, Ctrl-C
            os.kill(os.getpid(), sig)
        return losses

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    result = train(TrainConfig(out=str(tmp_path / "r"), data=str(prepared), max_steps=10_000, save_every=0,
                               **TINY_TRAIN))
    assert result["step"] == 5
    assert json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())["step"] == 5
    assert f"stopped by {signame} at step 5" in capsys.readouterr().out
    assert signal.getsignal(sig) == before  # the process's own handler is back


def test_learning_rate_warms_up_stays_then_cools_down_by_the_clock():
    from id3pm.training import scheduled_lr

    cfg = TrainConfig(data="", out="", lr=2e-4, warmup_steps=500, max_minutes=120, lr_cooldown_minutes=30)
    inf = float("inf")
    assert scheduled_lr(cfg, 0, 0, inf) == pytest.approx(2e-4 / 500)
    assert scheduled_lr(cfg, 249, 0, inf) == pytest.approx(1e-4)
    assert scheduled_lr(cfg, 10_000, 0, 3600.0) == 2e-4  # an hour left: before the cool-down's 30 min
    assert scheduled_lr(cfg, 10_000, 0, 1800.0) == 2e-4  # its start
    assert scheduled_lr(cfg, 10_000, 0, 450.0) == pytest.approx(2e-4 * 450 / 1800)  # a quarter of it left
    assert scheduled_lr(cfg, 10_000, 0, -5.0) == 0.0  # past the deadline
    assert scheduled_lr(cfg, 10_099, 10_000, inf) == pytest.approx(2e-4 * 100 / 500)  # re-warm after a resume
    assert scheduled_lr(TrainConfig(data="", out="", lr=2e-4), 10_000, 0, 5.0) == 2e-4  # no cool-down asked
    with pytest.raises(ValueError, match="lr-cooldown-minutes"):
        train(TrainConfig(data="", out="", lr_cooldown_minutes=5, max_minutes=0))


def test_a_cooled_down_run_ends_near_zero_and_warms_up_again_when_resumed(prepared, tmp_path, monkeypatch):
    # a fake clock: 0.2 s per step, the budget ends after step 60, the 6 s cool-down spans the last 30 steps
    monkeypatch.setattr(Budget, "seconds_left", lambda self: (60 - self.state["step"]) * 0.2)
    run = tmp_path / "r"
    kw = {**TINY_TRAIN, "log_every": 1, "save_every": 0}
    train(TrainConfig(out=str(run), data=str(prepared), max_steps=60, max_minutes=10, lr_cooldown_minutes=0.1, **kw))
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lr, warmup = kw["lr"], kw["warmup_steps"]
    expected = [lr * min(1, s / warmup) * min(1, (61 - s) * 0.2 / 6) for s in range(1, 61)]  # line s: step s - 1
    assert [r["lr"] for r in logged] == pytest.approx(expected)
    assert logged[-1]["lr"] == pytest.approx(lr / 30)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["warmup_from"] == 60
    info = json.loads((run / "model" / "id3pm.json").read_text())["training"]
    assert info["last_lr"] == pytest.approx(lr / 30) and info["lr_cooldown_minutes"] == 0.1
    monkeypatch.undo()
    train(TrainConfig(out=str(run), data=str(prepared), max_steps=63, **kw))  # the next period, no cool-down
    resumed = [json.loads(line)["lr"] for line in (run / "log.jsonl").read_text().splitlines()][-3:]
    assert resumed == pytest.approx([lr * k / warmup for k in (1, 2, 3)])  # warms up again from step 60
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["warmup_from"] == 60  # not cooled this time: a later resume goes on at the full rate


def test_budget_seconds_left_counts_down_to_its_deadline():
    budget = Budget(100, 2.0, {"step": 0, "train_seconds": 0.0}, started=time.time() - 30)
    assert 89 < budget.seconds_left() <= 90
    assert Budget(100, 0.0, {"step": 0, "train_seconds": 0.0}).seconds_left() == float("inf")
