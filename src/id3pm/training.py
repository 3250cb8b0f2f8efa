"""`id3pm train`: the training loop (one CPU, one GPU, or many via `accelerate launch`).

Every source of randomness of step k (batch order, timesteps, noise, condition
dropout, network dropout) is derived from (seed, k), so a run resumed from a
checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from id3pm.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, truncate_log
from id3pm.data import PreparedDataset, TrainingSet
from id3pm.diffusion import GaussianDiffusion, make_betas
from id3pm.images import contact_sheet, save_png, tensor_to_uint8
from id3pm.modeldir import PRESETS, save_model_dir
from id3pm.models import IDConditionedUNet


@dataclass
class TrainConfig:
    data: str  # prepared data set folder (id3pm prepare)
    out: str  # run folder: checkpoint/, model/, samples/, log.jsonl, tb/
    task: str = "base"  # "base": ID-conditioned diffusion; "superres": upsampler; "regression": baseline decoder
    size: int = 64  # image side to train on
    cond_size: int = 0  # superres: low-resolution side (0: size // 2)
    preset: str = "base"  # network size: tiny, small, base
    model: dict = field(default_factory=dict)  # overrides of the preset's network arguments
    schedule: str = "cosine"  # noise schedule
    num_timesteps: int = 1000  # diffusion steps T
    vlb_weight: float = 0.001  # lambda of the hybrid loss
    cond_drop: float = 0.1  # probability of replacing y by the null condition (classifier-free guidance)
    attr_drop: float = 0.1  # probability of dropping each attribute group
    null_condition: str = "zero"  # "zero" (the paper) or "learned"
    batch_size: int = 64  # global batch (split over processes)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 500  # linear learning-rate warm-up
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.9999  # EMA of the weights (with a 1+k / 10+k warm-up)
    max_steps: int = 100_000  # stop after this many steps ...
    max_minutes: float = 0.0  # ... or after this much wall time (0: no limit)
    save_every: int = 1000  # checkpoint + exported model every N steps
    sample_every: int = 2000  # sample grid every N steps (0: only at the end)
    log_every: int = 50  # log line every N steps
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU), "no", "bf16", "fp16"
    compile: bool = False  # torch.compile the network
    init_from: str = ""  # warm start: a model folder whose weights to start from (fresh optimizer)
    augment_level_max: float = 0.5  # superres: max noise-augmentation level of the low-res input (0..1)
    progress: bool = True


def attribute_stats(attrs: np.ndarray) -> dict:
    mean, std = attrs.mean(0), attrs.std(0) + 1e-6
    return {"mean": mean.tolist(), "std": std.tolist()}


class StepRandom:
    """Reproducible randomness for step k on one process."""

    def __init__(self, seed: int, step: int, rank: int, device):
        base = (seed * 1_000_003 + step) * 97 + rank
        self.cpu = torch.Generator().manual_seed(base)
        self.dev = torch.Generator(device).manual_seed(base) if torch.device(device).type == "cuda" else self.cpu
        torch.manual_seed(base + 1)  # network dropout draws from the global generator

    def randn(self, shape, device):
        return torch.randn(shape, generator=self.dev, device=self.dev.device).to(device)

    def rand(self, shape, device):
        return torch.rand(shape, generator=self.dev, device=self.dev.device).to(device)

    def randint(self, high, shape, device):
        return torch.randint(0, high, shape, generator=self.dev, device=self.dev.device).to(device)


class BatchOrder:
    """Global batch k = positions k*B .. k*B+B-1 of an endless stream of epochs, each
    epoch a permutation seeded by (seed, epoch)."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed, self._perms = n, batch, seed, {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            # keep only the newest epoch: a batch straddles at most two, in order
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        local = self.batch // world
        pos = step * self.batch + rank * local + np.arange(local)
        out = np.empty(local, dtype=np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self._perm(int(epoch))[pos[sel] % self.n]
        return out


def build_model(cfg: TrainConfig, data: PreparedDataset, train_set: TrainingSet) -> tuple[IDConditionedUNet, dict]:
    """A new network for this data set, plus the info that goes into id3pm.json."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    args = {**PRESETS[cfg.preset], **cfg.model}
    vectors = train_set.vectors.numpy()
    mean_norm = float(np.linalg.norm(vectors, axis=1).mean())
    info = {
        "task": cfg.task,
        "image_size": cfg.size,
        "diffusion": {"schedule": cfg.schedule, "num_timesteps": cfg.num_timesteps},
        "encoder": data.manifest["encoder"],
        "distance": data.manifest.get("distance", "euclidean"),
        "id_dim": data.id_dim,
        "id_mean_norm": mean_norm,
        "attributes": None,
        "data": {"path": str(data.path), "train_images": len(train_set), "alignment": data.manifest.get("alignment")},
    }
    if cfg.task == "superres":
        args.update(id_dim=0, extra_cond_channels=3, use_level_embedding=True, attr_dim=0)
        info["cond_size"] = cfg.cond_size or cfg.size // 2
        info["augment_level_max"] = cfg.augment_level_max
    else:
        # Scale y so that its entries are O(1) before the Linear layer, whatever the encoder's norm.
        args.update(id_dim=data.id_dim, id_scale=math.sqrt(data.id_dim) / max(mean_norm, 1e-8))
        args["null_condition"] = cfg.null_condition
        if train_set.attrs is not None:
            args["attr_dim"] = train_set.attrs.shape[1]
            attrs = train_set.attrs.numpy()
            pick = np.random.default_rng(cfg.seed).choice(len(attrs), size=min(512, len(attrs)), replace=False)
            info["attributes"] = {
                "names": data.attribute_names,
                **attribute_stats(attrs),
                "samples": attrs[pick].round(4).tolist(),  # to draw unset attributes from the data
            }
    if cfg.task == "regression":
        args["out_channels"] = 3
    model = IDConditionedUNet(sample_size=cfg.size, **args)
    return model, info


def batch_from(train_set: TrainingSet, idx: np.ndarray, device) -> dict:
    if train_set.cache is not None:
        t = torch.from_numpy(idx)
        batch = {
            "image": train_set.cache[t].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "id_vector": train_set.vectors[t].to(device),
        }
        if train_set.attrs is not None:
            batch["attributes"] = train_set.attrs[t].to(device)
        if train_set.cond_cache is not None:
            batch["cond_image"] = train_set.cond_cache[t].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        return batch
    items = [train_set[int(i)] for i in idx]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def step_loss(cfg, model, diffusion, batch, rnd: StepRandom, info) -> dict:
    """Per-sample losses of one batch for the configured task."""
    x0 = batch["image"]
    b, device = x0.shape[0], x0.device
    if cfg.task == "regression":  # the paper's Eq. 4 baseline: g(y) -> x, one-to-one, MSE
        out = model(torch.zeros_like(x0), torch.zeros(b, dtype=torch.long, device=device), id_vector=batch["id_vector"])
        mse = ((out.float() - x0) ** 2).mean(dim=(1, 2, 3))
        return {"loss": mse, "mse": mse}
    t = rnd.randint(diffusion.num_timesteps, (b,), device)
    noise = rnd.randn(x0.shape, device)
    kwargs: dict = {}
    if cfg.task == "superres":
        # Noise-conditioning augmentation (Ho et al. 2021): corrupt the low-res input by
        # q_sample at a random level and tell the network the level.
        low = upsample(batch["cond_image"], cfg.size)
        level = rnd.rand((b,), device) * cfg.augment_level_max
        lt = (level * (diffusion.num_timesteps - 1)).long()
        kwargs["cond_image"] = diffusion.q_sample(low, lt, rnd.randn(low.shape, device))
        kwargs["level"] = level * 1000
    else:
        kwargs["id_vector"] = batch["id_vector"]
        kwargs["drop_id"] = rnd.rand((b,), device) < cfg.cond_drop
        if "attributes" in batch:
            stats = info["attributes"]
            mean = torch.tensor(stats["mean"], device=device)
            std = torch.tensor(stats["std"], device=device)
            kwargs["attributes"] = (batch["attributes"] - mean) / std
            kwargs["attr_mask"] = attribute_dropout_mask(stats["names"], b, cfg.attr_drop, rnd, device)
    return diffusion.training_losses(lambda xt, tt: model(xt, tt, **kwargs), x0, t, noise, vlb_weight=cfg.vlb_weight)


def attribute_dropout_mask(names: list[str], b: int, p: float, rnd: StepRandom, device) -> torch.Tensor:
    """Drop each attribute group (pose, expression) independently with probability p."""
    from id3pm.attributes import ATTRIBUTE_GROUPS

    mask = torch.ones(b, len(names), device=device)
    for members in ATTRIBUTE_GROUPS.values():
        cols = [i for i, n in enumerate(names) if n in members]
        if cols:
            keep = (rnd.rand((b, 1), device) >= p).float()
            mask[:, cols] = keep
    return mask


@torch.no_grad()
def sample_grid(cfg, ema_model, info, diffusion, train_set, holdout_set, step: int, out: Path):
    """Reference images (top row) and EMA samples at guidance 2 for fixed held-out vectors."""
    from id3pm.diffusion import respace, space_timesteps
    from id3pm.sampling import guided_denoiser, make_generators, per_image_noise, sample_dpmpp_2m

    source = holdout_set if holdout_set is not None else train_set
    n = min(8, len(source))
    device = next(ema_model.parameters()).device
    batch = batch_from(source, np.arange(n), device)
    d = respace(diffusion, space_timesteps(diffusion.num_timesteps, 25))
    gens = make_generators(range(n))
    x = per_image_noise(gens, (3, cfg.size, cfg.size), device)
    if cfg.task == "regression":
        samples = ema_model(torch.zeros_like(x), torch.zeros(n, dtype=torch.long, device=device), id_vector=batch["id_vector"])
    elif cfg.task == "superres":
        low = upsample(batch["cond_image"], cfg.size)
        denoise = lambda xt, t: ema_model(xt, t, cond_image=low, level=torch.zeros(n, device=device))  # noqa: E731
        samples = sample_dpmpp_2m(denoise, d, x, gens)
    else:
        denoise = guided_denoiser(ema_model, batch["id_vector"], 2.0)
        samples = sample_dpmpp_2m(denoise, d, x, gens)
    real = tensor_to_uint8(batch["image"])
    fake = tensor_to_uint8(samples[:, :3])
    sheet = contact_sheet([list(real), list(fake)], row_labels=["data", f"step {step}"], cell=96)
    save_png(sheet, out / "samples" / f"step_{step:07d}.png", {"step": step})
    return sheet


def train(cfg: TrainConfig) -> dict:
    from accelerate import Accelerator

    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by {world} processes")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    data = PreparedDataset(cfg.data)
    cond_size = (cfg.cond_size or cfg.size // 2) if cfg.task == "superres" else None
    train_set = TrainingSet(data, cfg.size, "train", cond_size=cond_size)
    holdout_set = None
    if len(data.split_indices("holdout")):
        holdout_set = TrainingSet(data, cfg.size, "holdout", cond_size=cond_size)

    ckpt = find_checkpoint(out / "checkpoint")
    if ckpt is not None:  # resume: the network and its info come from the checkpoint
        info = json.loads((ckpt / "info.json").read_text())
        model = IDConditionedUNet.from_config(json.loads((ckpt / "model_config.json").read_text()))
    else:
        torch.manual_seed(cfg.seed)  # the initial weights are part of the run's seed too
        model, info = build_model(cfg, data, train_set)
        if cfg.init_from:  # warm start from a shipped model: its weights, our optimizer
            from id3pm.modeldir import load_model_dir

            src, src_info = load_model_dir(cfg.init_from)
            if src.config != model.config:
                model = IDConditionedUNet.from_config(src.config)
            model.load_state_dict(src.state_dict())
            info["warm_start"] = {"from": cfg.init_from, "previous_training": src_info.get("training")}
    model.to(device)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    state = {"step": 0, "images_seen": 0, "train_seconds": 0.0}
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, optimizer, device)
        truncate_log(out / "log.jsonl", state["step"])
        accelerator.print(f"resumed from {ckpt} at step {state['step']}")

    diffusion = GaussianDiffusion(make_betas(info["diffusion"]["schedule"], info["diffusion"]["num_timesteps"]))
    flops = forward_flops(model, cfg, info, device)
    train_model = torch.compile(model) if cfg.compile else model
    train_model, optimizer = accelerator.prepare(train_model, optimizer)
    order = BatchOrder(len(train_set), cfg.batch_size, cfg.seed)

    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))

    def lr_at(step: int) -> float:
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))

    def save(step: int):
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        unwrapped = accelerator.unwrap_model(train_model)
        if hasattr(unwrapped, "_orig_mod"):
            unwrapped = unwrapped._orig_mod
        save_checkpoint(out / "checkpoint", unwrapped, ema, optimizer, {**state, "config": asdict(cfg)})
        (out / "checkpoint" / "info.json").write_text(json.dumps(info, indent=2))
        (out / "checkpoint" / "model_config.json").write_text(json.dumps(dict(unwrapped.config), indent=2))
        export(step, unwrapped)

    def ema_model(unwrapped) -> IDConditionedUNet:
        m = copy.deepcopy(unwrapped).float()
        m.load_state_dict(ema)
        return m.eval()

    def export(step, unwrapped):
        summary = {
            "steps": step,
            "images_seen": state["images_seen"],
            "train_seconds": round(state["train_seconds"], 1),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "mixed_precision": precision,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "processes": world,
            "forward_gflops_per_image": round(flops / 1e9, 3),
            "last_loss": state.get("last_loss"),
        }
        save_model_dir(out / "model", ema_model(unwrapped), {**info, "training": summary})

    run_start, seconds_before = time.time(), state["train_seconds"]
    step = state["step"]
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not (cfg.progress and accelerator.is_main_process))
    window = {"loss": torch.zeros((), device=device), "steps": 0, "start": time.time()}

    def log_window(step: int, losses: dict) -> None:
        """One log line for the steps since the last one (also at a budget stop)."""
        if not window["steps"]:
            return
        elapsed = max(time.time() - window["start"], 1e-9)
        images = window["steps"] * cfg.batch_size
        record = {
            "step": step,
            "loss": window["loss"].item() / window["steps"],
            "mse": losses["mse"].mean().item(),
            "vb": losses["vb"].mean().item() if "vb" in losses else None,
            "lr": lr_at(step - 1),
            "images_per_second": images / elapsed,
            "tflops": 3 * flops * images / elapsed / 1e12,  # backward ~ 2x forward
        }
        state["last_loss"] = record["loss"]
        if accelerator.is_main_process:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if k != "step" and v is not None:
                    writer.add_scalar(f"train/{k}", v, step)
            bar.set_postfix(loss=f"{record['loss']:.4f}", ips=f"{record['images_per_second']:.0f}")
        window.update(loss=torch.zeros((), device=device), steps=0, start=time.time())

    losses: dict = {}
    train_model.train()
    while step < cfg.max_steps:
        if cfg.max_minutes and (time.time() - run_start) / 60 >= cfg.max_minutes:
            accelerator.print(f"time budget of {cfg.max_minutes} min reached at step {step}")
            break
        rnd = StepRandom(cfg.seed, step, rank, device)
        batch = batch_from(train_set, order.indices(step, rank, world), device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with accelerator.autocast():
            losses = step_loss(cfg, train_model, diffusion, batch, rnd, info)
        loss = losses["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(train_model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        update_ema(ema, accelerator.unwrap_model(train_model), cfg.ema_decay, step)
        state["step"] = step
        state["images_seen"] += cfg.batch_size
        state["train_seconds"] = seconds_before + time.time() - run_start
        window["loss"] += loss.detach()  # no host sync per step; .item() only when logging
        window["steps"] += 1
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            log_window(step, losses)
        if cfg.save_every and step % cfg.save_every == 0:
            save(step)
        if cfg.sample_every and step % cfg.sample_every == 0 and accelerator.is_main_process:
            sheet = sample_grid(cfg, ema_model(accelerator.unwrap_model(train_model)).to(device), info, diffusion,
                                train_set, holdout_set, step, out)
            writer.add_image("samples", sheet, step, dataformats="HWC")
    log_window(step, losses)
    bar.close()
    save(step)
    if accelerator.is_main_process:
        sample_grid(cfg, ema_model(accelerator.unwrap_model(train_model)).to(device), info, diffusion, train_set,
                    holdout_set, step, out)
        writer.close()
    return {"step": step, "images_seen": state["images_seen"], "out": str(out), "last_loss": state.get("last_loss")}


@torch.no_grad()
def update_ema(ema: dict, model: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
        else:
            ema[k].copy_(v)


def forward_flops(model: torch.nn.Module, cfg: TrainConfig, info: dict, device) -> float:
    """FLOPs of one forward pass for one image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, cfg.size, cfg.size, device=device)
    kwargs = {}
    if model.config.id_dim:
        kwargs["id_vector"] = torch.zeros(1, model.config.id_dim, device=device)
    if model.config.extra_cond_channels:
        kwargs["cond_image"] = torch.zeros(1, model.config.extra_cond_channels, cfg.size, cfg.size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(1, dtype=torch.long, device=device), **kwargs)
    return float(counter.get_total_flops())
