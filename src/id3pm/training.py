"""`id3pm train`: the training loop (one CPU, one GPU, or many via `accelerate launch`).

Every source of randomness of step k (batch order, timesteps, noise, condition
dropout, network dropout) is derived from (seed, k), so a run resumed from a
checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from id3pm.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, truncate_log
from id3pm.data import PreparedDataset, TrainingSet
from id3pm.files import complete_folder
from id3pm.hardware import auto_precision, cpu_description
from id3pm.diffusion import GaussianDiffusion, make_betas
from id3pm.images import contact_sheet, save_png, tensor_to_uint8
from id3pm.train_config import TrainConfig
from id3pm.modeldir import PRESETS, save_model_dir
from id3pm.models import IDConditionedUNet
from id3pm.models.unet import coordinate_canvas
from id3pm.prior import PRIOR_FOLDER, PRIOR_START, cached_prior_images, widen_input_channels
from id3pm.diffusion.weighting import WEIGHTINGS, loss_weights
from id3pm.prior import as_input as prior_as_input


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


class WeightedBatchOrder:
    """Global batch k drawn with replacement from fixed probabilities (id3pm.data.balance),
    seeded by (seed, k): the same batches whatever the resumes, as BatchOrder's."""

    def __init__(self, weights: np.ndarray, batch: int, seed: int):
        self.p, self.batch, self.seed = weights / weights.sum(), batch, seed

    def indices(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        local = self.batch // world
        drawn = np.random.default_rng([self.seed, step, 1]).choice(len(self.p), size=self.batch, p=self.p)
        return drawn[rank * local : (rank + 1) * local]


def batch_order(cfg: TrainConfig, data: PreparedDataset, train_set: TrainingSet, info: dict):
    """Plain epochs, or balanced draws (--balance); the shares go into the model's info."""
    from id3pm.data.balance import balance_weights, shares

    idx = train_set.indices
    ages = data.metadata("age", idx) if "meta_age" in data.table.column_names else None
    weights = balance_weights(data.sources[idx], ages, cfg.balance)
    if weights is None:
        info.pop("balance", None)
        return BatchOrder(len(train_set), cfg.batch_size, cfg.seed)
    info["balance"] = {"spec": cfg.balance, "source_shares": shares(weights, data.sources[idx])}
    return WeightedBatchOrder(weights, cfg.batch_size, cfg.seed)


def noisy_condition(y: torch.Tensor, cond_noise: float, mean_norm: float, rnd) -> torch.Tensor:
    """y plus Gaussian noise whose expected norm is cond_noise times y's mean norm (as
    cascaded models noise their conditioning): the model learns to read y's neighbourhood."""
    if not cond_noise:
        return y
    sigma = cond_noise * mean_norm / math.sqrt(y.shape[1])
    return y + sigma * rnd.randn(y.shape, y.device)


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
        info["patch_size"] = cfg.patch_size or cfg.size
        info["residual"] = cfg.sr_residual  # the residual's scale; 0: the whole image is diffused
        info["objective"] = "regression" if cfg.sr_regression else "diffusion"
        if cfg.sr_regression:  # the detail itself, no learned variance
            args["out_channels"] = 3
        if cfg.sr_adversarial:
            if not cfg.sr_regression:
                raise ValueError("--sr-adversarial needs --sr-regression yes: the discriminator judges a one-pass output")
            info["adversarial"] = {"weight": cfg.sr_adversarial}
    if cfg.task != "superres" or cfg.sr_identity:
        # Scale y so that its entries are O(1) before the Linear layer, whatever the encoder's norm.
        args.update(id_dim=data.id_dim, id_scale=math.sqrt(data.id_dim) / max(mean_norm, 1e-8))
        args["null_condition"] = cfg.null_condition
    if cfg.task != "superres":
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
    if cfg.prior:
        if cfg.task != "base":
            raise ValueError("--prior is for the base task")
        args["extra_cond_channels"] = 3  # g(y) next to x_t
        info["prior"] = {"folder": PRIOR_FOLDER, "from": cfg.prior}
    model = IDConditionedUNet(sample_size=cfg.size, **args)
    return model, info


def load_all_but_conditioning(model: IDConditionedUNet, state: dict) -> None:
    """Every weight of state except the Linear that reads y, which keeps its fresh
    initialisation: what the network learned of faces carries over to another FR model's
    vectors, and only the map from those vectors has to be learned again."""
    kept = {k: v for k, v in state.items() if not k.startswith("id_embedding.")}
    result = model.load_state_dict(kept, strict=False)
    if sorted(result.missing_keys) != ["id_embedding.bias", "id_embedding.weight"] or result.unexpected_keys:
        raise ValueError(f"the source network differs beyond its conditioning layer: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")


# network arguments that change no weight: a warm start takes them from this run's --model
# (#24: a model that under-fits may train on without dropout), everything else from the source
WEIGHTLESS_SETTINGS = ("dropout",)


def config_differences(a: IDConditionedUNet, b: IDConditionedUNet) -> set[str]:
    """Names of the network arguments in which two models differ (tuples and lists alike)."""
    norm = lambda c: json.loads(json.dumps({k: v for k, v in c.items() if not k.startswith("_")}))  # noqa: E731
    ca, cb = norm(a.config), norm(b.config)
    return {k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)}


def batch_from(train_set: TrainingSet, idx: np.ndarray, device) -> dict:
    t = torch.from_numpy(idx)
    prior = {} if train_set.prior_cache is None else {"prior_image": train_set.prior_cache[t]}  # uint8
    if train_set.cache is not None:
        batch = {
            **prior,
            "image": train_set.cache[t].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "id_vector": train_set.vectors[t].to(device),
        }
        if train_set.attrs is not None:
            batch["attributes"] = train_set.attrs[t].to(device)
        if train_set.cond_cache is not None:
            batch["cond_image"] = train_set.cond_cache[t].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        return batch
    items = [train_set[int(i)] for i in idx]
    return {**prior, **{k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}}


def upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def same_windows(images: tuple[torch.Tensor, ...], side: int, rnd: StepRandom) -> tuple[torch.Tensor, ...]:
    """The same random side x side window of sample i in every tensor (the high-res target
    and its upsampled low-res input): SR3 and Imagen train their upsamplers on crops, so
    that a step costs (side / size)^2 of a whole face and the network stays convolutional."""
    b, _, h, w = images[0].shape
    if side <= 0 or side >= min(h, w):
        return images
    top = rnd.randint(h - side + 1, (b,), "cpu").tolist()
    left = rnd.randint(w - side + 1, (b,), "cpu").tolist()
    return tuple(torch.stack([im[i, :, top[i] : top[i] + side, left[i] : left[i] + side] for i in range(b)])
                 for im in images)


def step_loss(cfg, model, diffusion, batch, rnd: StepRandom, info) -> dict:
    """Per-sample losses of one batch for the configured task."""
    x0 = batch["image"]
    b, device = x0.shape[0], x0.device
    if cfg.task == "regression":  # the paper's Eq. 4 baseline: g(y) -> x, one-to-one, MSE
        # through the (compiled / DDP) wrapper's forward, so not model.regress()
        canvas = coordinate_canvas(b, x0.shape[-1], device)
        out = model(canvas, torch.zeros(b, dtype=torch.long, device=device), id_vector=batch["id_vector"])
        mse = ((out.float() - x0) ** 2).mean(dim=(1, 2, 3))
        return {"loss": mse, "mse": mse}
    kwargs: dict = {}
    if cfg.task == "superres":
        # Noise-conditioning augmentation (Ho et al. 2021): corrupt the low-res input by
        # q_sample at a random level and tell the network the level.
        low = upsample(batch["cond_image"], cfg.size)
        high, low = same_windows((x0, low), cfg.patch_size, rnd)
        x0 = high
        if info.get("residual"):  # what the upsampler has to invent: the detail bicubic lacks,
            x0 = (high - low) * info["residual"]  # scaled: at std 0.05 the schedule would drown it at once
        level = rnd.rand((b,), device) * cfg.augment_level_max
        lt = (level * (diffusion.num_timesteps - 1)).long()
        kwargs["cond_image"] = diffusion.q_sample(low, lt, rnd.randn(low.shape, device))
        kwargs["level"] = level * 1000
        if cfg.sr_identity:
            kwargs["id_vector"] = batch["id_vector"]
            kwargs["drop_id"] = rnd.rand((b,), device) < cfg.cond_drop
        if info.get("objective") == "regression":
            losses = regression_sr_loss(model, x0, kwargs)
            if info.get("adversarial"):  # (real, upsampled, bicubic input) windows for the discriminator
                losses["windows"] = (high, detail_to_image(losses["detail"], low, info.get("residual")), low)
            return losses
    t = rnd.randint(diffusion.num_timesteps, (b,), device)
    noise = rnd.randn(x0.shape, device)
    if cfg.task != "superres":
        kwargs["id_vector"] = noisy_condition(batch["id_vector"], cfg.cond_noise, info.get("id_mean_norm", 1.0), rnd)
        kwargs["drop_id"] = rnd.rand((b,), device) < cfg.cond_drop
        if "prior_image" in batch:  # dropped together with y: the unconditional model sees no identity
            kwargs["cond_image"] = prior_as_input(batch["prior_image"], device, drop=kwargs["drop_id"])
        if "attributes" in batch:
            stats = info["attributes"]
            mean = torch.tensor(stats["mean"], device=device)
            std = torch.tensor(stats["std"], device=device)
            kwargs["attributes"] = (batch["attributes"] - mean) / std
            kwargs["attr_mask"] = attribute_dropout_mask(stats["names"], b, cfg.attr_drop, rnd, device)
    return diffusion.training_losses(lambda xt, tt: model(xt, tt, **kwargs), x0, t, noise, vlb_weight=cfg.vlb_weight,
                                     eps_weights=eps_weights(cfg, diffusion))


def eps_weights(cfg, diffusion) -> torch.Tensor | None:
    """The run's weights of the eps loss over t (--loss-weighting), or None for uniform."""
    weights = loss_weights(cfg.loss_weighting, diffusion.alphas_cumprod)
    return None if weights is None else torch.as_tensor(weights, dtype=torch.float32)


def regression_sr_loss(model, target: torch.Tensor, kwargs: dict) -> dict:
    """L1 between the detail the network predicts in one pass and the true one (SR-CNNs
    since EDSR train on L1: sharper than L2 where the input decides, the median where it
    does not). There is nothing to denoise: the noisy-image channels are zeros, t is 0."""
    b = target.shape[0]
    out = model(torch.zeros_like(target), torch.zeros(b, dtype=torch.long, device=target.device), **kwargs).float()
    l1 = (out - target).abs().mean(dim=(1, 2, 3))
    return {"loss": l1, "mse": ((out - target) ** 2).mean(dim=(1, 2, 3)), "detail": out}


def detail_to_image(detail: torch.Tensor, low: torch.Tensor, residual: float | None) -> torch.Tensor:
    """The upsampled image from the network's output: bicubic plus the detail / its scale
    (--sr-residual), or the output itself. Not clamped: a clamp would stop the gradient."""
    return low + detail / residual if residual else detail


def attribute_groups(names: list[str]) -> list[list[int]]:
    """Column groups that are dropped together: the named groups (pose, expression), and
    every other attribute (e.g. meta:age) on its own, since inference can leave each unset."""
    from id3pm.attributes import ATTRIBUTE_GROUPS

    groups = [[i for i, n in enumerate(names) if n in members] for members in ATTRIBUTE_GROUPS.values()]
    grouped = {i for g in groups for i in g}
    return [g for g in groups if g] + [[i] for i in range(len(names)) if i not in grouped]


def attribute_dropout_mask(names: list[str], b: int, p: float, rnd: StepRandom, device) -> torch.Tensor:
    """Drop each attribute group independently with probability p (per sample)."""
    mask = torch.ones(b, len(names), device=device)
    for cols in attribute_groups(names):
        keep = (rnd.rand((b, 1), device) >= p).float()
        mask[:, cols] = keep
    return mask


@torch.no_grad()
def sample_grid(cfg, ema_model, info, diffusion, train_set, holdout_set, step: int, out: Path):
    """Reference images (top row) and EMA samples at guidance 2 for fixed held-out vectors."""
    from id3pm.sampling import guided_denoiser, make_generators, per_image_noise, sample_dpmpp_2m, start_of_sampling

    source = holdout_set if holdout_set is not None else train_set
    n = min(8, len(source))
    device = next(ema_model.parameters()).device
    batch = batch_from(source, np.arange(n), device)
    gens = make_generators(range(n))
    x = per_image_noise(gens, (3, cfg.size, cfg.size), device)
    if cfg.task == "regression":
        samples = ema_model.regress(batch["id_vector"])
    elif cfg.task == "superres":
        low = upsample(batch["cond_image"], cfg.size)
        y = batch["id_vector"] if ema_model.config.id_dim else None
        denoise = lambda xt, t: ema_model(xt, t, cond_image=low, level=torch.zeros(n, device=device), id_vector=y)  # noqa: E731
        if info.get("objective") == "regression":
            samples = denoise(torch.zeros_like(x), torch.zeros(n, dtype=torch.long, device=device))
        else:
            samples = sample_dpmpp_2m(denoise, *start_of_sampling(diffusion, 25, x), gens)
        if info.get("residual"):
            samples = (samples / info["residual"] + low).clamp(-1, 1)
    else:  # as the pipeline samples: from g(y) noised to PRIOR_START when there is a prior
        prior = None if "prior_image" not in batch else prior_as_input(batch["prior_image"], device)
        denoise = guided_denoiser(ema_model, batch["id_vector"], 2.0, prior_image=prior)
        d, x = start_of_sampling(diffusion, 25, x, prior, PRIOR_START if prior is not None else 1.0)
        samples = sample_dpmpp_2m(denoise, d, x, gens)
    real = tensor_to_uint8(batch["image"])
    fake = tensor_to_uint8(samples[:, :3])
    sheet = contact_sheet([list(real), list(fake)], row_labels=["data", f"step {step}"], cell=96)
    save_png(sheet, out / "samples" / f"step_{step:07d}.png", {"step": step})
    return sheet


class Trainer:
    """One training run: the network (ONE raw reference, whatever compile or DDP wrap
    around it), its EMA, the optimizer and the step counters, with a method per job."""

    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        self.created = time.time()  # --max-minutes counts from here (Budget)
        if cfg.lr_cooldown_minutes and not 0 < cfg.lr_cooldown_minutes <= cfg.max_minutes:
            raise ValueError(f"--lr-cooldown-minutes {cfg.lr_cooldown_minutes} needs a --max-minutes at least as long "
                             f"(got {cfg.max_minutes}): the cool-down ends with the time budget")
        if cfg.loss_weighting not in WEIGHTINGS:  # here, not at the first step after the data loaded
            raise ValueError(f"unknown --loss-weighting {cfg.loss_weighting!r}; choose one of {list(WEIGHTINGS)}")
        self.cfg = cfg
        self.precision = cfg.mixed_precision
        if self.precision == "auto":  # bf16 only where it is fast: GPU, or a CPU with native bf16
            self.precision = {"bf16": "bf16", "fp32": "no"}[auto_precision("cuda" if torch.cuda.is_available() else "cpu")]
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state.get("_mixed_precision", self.precision) != self.precision:
            # a second run in this process with another precision (tests, notebooks): accelerate
            # keeps one global state and refuses to change it; its process group (PartialState) stays
            AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision=self.precision)
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by {self.world} processes")
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._load_data()
        self._build_or_resume()
        self._load_prior()
        self.diffusion = GaussianDiffusion(
            make_betas(self.info["diffusion"]["schedule"], self.info["diffusion"]["num_timesteps"])
        )
        self.flops = forward_flops(self.model, cfg, self.info, self.device)
        # The wrapped model trains; self.model (same parameters) is what we save, average and export.
        wrapped = torch.compile(self.model) if cfg.compile else self.model
        self.train_model, self.optimizer = self.accelerator.prepare(wrapped, self.optimizer)
        self.order = batch_order(cfg, self.data, self.train_set, self.info)
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        self.window = LogWindow(self.device)
        self.budget: Budget | None = None  # set by run(); the learning-rate cool-down reads its clock

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _load_data(self) -> None:
        cfg = self.cfg
        self.data = PreparedDataset(cfg.data)
        cond_size = (cfg.cond_size or cfg.size // 2) if cfg.task == "superres" else None
        self.train_set = TrainingSet(self.data, cfg.size, "train", cond_size=cond_size)
        self.holdout_set = None
        if len(self.data.split_indices("holdout")):
            self.holdout_set = TrainingSet(self.data, cfg.size, "holdout", cond_size=cond_size)

    def _build_or_resume(self) -> None:
        cfg = self.cfg
        ckpt = find_checkpoint(self.out / "checkpoint")
        if ckpt is not None:  # resume: the network and its info come from the checkpoint
            self.info = json.loads((ckpt / "info.json").read_text())
            model = IDConditionedUNet.from_config(json.loads((ckpt / "model_config.json").read_text()))
        else:
            torch.manual_seed(cfg.seed)  # the initial weights are part of the run's seed too
            model, self.info = build_model(cfg, self.data, self.train_set)
            if cfg.init_from:  # warm start from a shipped model: its weights, our optimizer
                from id3pm.modeldir import load_model_dir

                src, src_info = load_model_dir(cfg.init_from)
                # id_scale: on another encoder's vectors (an aware attacker's protected templates)
                # this data's, so that y's entries still reach the Linear as O(1); on the same
                # encoder's (new people) the source's, so that the network reads y as it learned to
                same_encoder = (src_info.get("encoder", {}).get("name") == self.info["encoder"].get("name")
                                and src.config.id_dim == model.config.id_dim)
                id_scale = src.config.id_scale if same_encoder else model.config.id_scale
                # what this run asks of the network that changes no weight (dropout) applies on top
                # of the source's configuration; the rest of --model cannot apply to loaded weights
                run_only = {k: v for k, v in cfg.model.items() if k in WEIGHTLESS_SETTINGS}
                differs = config_differences(src, model) - {"id_scale"} - set(WEIGHTLESS_SETTINGS)
                if differs == {"extra_cond_channels"}:  # a model without the prior, widened to take it
                    model = IDConditionedUNet.from_config({**model.config, "id_scale": id_scale, **run_only})
                    widen_input_channels(model, src.state_dict())
                elif "id_dim" in differs:  # another FR model's vectors (#25): the source's network, a new conditioning layer
                    model = IDConditionedUNet.from_config({**src.config, "id_dim": model.config.id_dim, "id_scale": id_scale,
                                                           **run_only})
                    load_all_but_conditioning(model, src.state_dict())
                else:
                    model = IDConditionedUNet.from_config({**src.config, "id_scale": id_scale, **run_only})
                    model.load_state_dict(src.state_dict())
                self.info["warm_start"] = {"from": cfg.init_from, "previous_training": src_info.get("training")}
        self.model = model.to(self.device)
        self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items()}
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=self.device.type == "cuda"
        )
        self.adversary = None  # the discriminator of --sr-adversarial (id3pm.adversarial), training only
        if self.info.get("adversarial"):
            from id3pm.adversarial import AdversarialTerm

            if self.world > 1:  # each process would train its own discriminator: not synchronised (yet)
                raise ValueError(f"--sr-adversarial trains on one process; this launch has {self.world}")

            self.adversary = AdversarialTerm(self.info["adversarial"]["weight"], cfg.lr, self.device, cfg.seed)
        self.state = {"step": 0, "images_seen": 0, "train_seconds": 0.0}
        if ckpt is not None:
            self.state = load_checkpoint(ckpt, self.model, self.ema, self.optimizer, self.device, self.parts())
            truncate_log(self.out / "log.jsonl", self.state["step"])
            self.accelerator.print(f"resumed from {ckpt} at step {self.state['step']}")

    def _load_prior(self) -> None:
        """The regression prior, copied into the run folder (a resume and the exported
        model need nothing outside it), then g(y) of every training and holdout image."""
        self.prior = None
        if not self.info.get("prior"):
            return
        from id3pm.modeldir import load_model_dir

        own = self.out / PRIOR_FOLDER
        if not (own / "id3pm.json").exists():
            prior, prior_info = load_model_dir(self.cfg.prior)
            if prior_info.get("task") != "regression":
                raise ValueError(f"{self.cfg.prior}: a prior must be a regression model (id3pm train --task regression)")
            if self.is_main:
                save_model_dir(own, prior, prior_info)
            self.accelerator.wait_for_everyone()
        self.prior, self.prior_info = load_model_dir(own, device=self.device)
        start = time.time()
        for name, split in (("train", self.train_set), ("holdout", self.holdout_set)):
            if split is not None:
                split.prior_cache = cached_prior_images(self.prior, split.vectors, own / f"cache_{name}.safetensors")
        self.accelerator.print(f"prior g(y) of {len(self.train_set)} training images in {time.time() - start:.0f} s")

    def parts(self) -> dict:
        """What trains beside the network and goes into the checkpoint with it."""
        if self.adversary is None:
            return {}
        return {"discriminator": (self.adversary.discriminator, self.adversary.optimizer)}

    def lr_at(self, step: int) -> float:
        seconds_left = self.budget.seconds_left() if self.budget is not None else math.inf
        return scheduled_lr(self.cfg, step, self.state.get("warmup_from", 0), seconds_left)

    def cooling(self) -> bool:
        """Whether the learning-rate cool-down has begun (it lasts until the run ends)."""
        return (self.cfg.lr_cooldown_minutes > 0 and self.budget is not None
                and self.budget.seconds_left() < self.cfg.lr_cooldown_minutes * 60)

    def ema_model(self) -> IDConditionedUNet:
        m = copy.deepcopy(self.model).float()
        m.load_state_dict(self.ema)
        return m.eval()

    def save(self) -> None:
        """Checkpoint (for resuming) and the EMA model folder (for using)."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        ckpt = self.out / "checkpoint"
        # info and network config inside the checkpoint, not beside it: a resume reads them
        # a run whose learning rate was cooled down warms it up again from where it resumes:
        # jumping from ~0 back to the full rate would undo the cool-down's gain in a few steps
        warmup_from = self.state["step"] if self.cooling() else self.state.get("warmup_from", 0)
        state = {**self.state, "warmup_from": warmup_from, "config": asdict(self.cfg)}
        save_checkpoint(ckpt, self.model, self.ema, self.optimizer, state,
                        extra_json={"info.json": self.info, "model_config.json": dict(self.model.config)},
                        parts=self.parts())
        self.export()

    def export(self) -> None:
        cfg = self.cfg
        summary = {
            "steps": self.state["step"],
            "images_seen": self.state["images_seen"],
            "train_seconds": round(self.state["train_seconds"], 1),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "lr_cooldown_minutes": cfg.lr_cooldown_minutes,
            "loss_weighting": cfg.loss_weighting or "uniform",  # id3pm.diffusion.weighting
            "last_lr": self.optimizer.param_groups[0]["lr"],
            "mixed_precision": self.precision,
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else f"cpu ({cpu_description()})",
            "processes": self.world,
            "forward_gflops_per_image": round(self.flops / 1e9, 3),
            "last_loss": self.state.get("last_loss"),
        }
        # What the network has seen over its whole lineage (warm starts included), and the
        # compute of the regression prior it depends on.
        before = self.info.get("warm_start", {}).get("previous_training") or {}
        for key in ("images_seen", "steps", "train_seconds"):
            summary[f"total_{key}"] = summary[key] + before.get(f"total_{key}", before.get(key, 0))
        if self.prior is not None:
            summary["prior_train_seconds"] = self.prior_info.get("training", {}).get("train_seconds", 0.0)
        with complete_folder(self.out / "model", "the exported model") as tmp:
            save_model_dir(tmp, self.ema_model(), {**self.info, "training": summary})
            if self.prior is not None:
                save_model_dir(tmp / PRIOR_FOLDER, self.prior, self.prior_info)

    def sample(self) -> None:
        if not self.is_main:
            return
        step = self.state["step"]
        sheet = sample_grid(self.cfg, self.ema_model().to(self.device), self.info, self.diffusion, self.train_set,
                            self.holdout_set, step, self.out)
        self.writer.add_image("samples", sheet, step, dataformats="HWC")

    def log(self, losses: dict) -> None:
        """One log line for the steps since the last one (also at a budget stop)."""
        record = self.window.record(self.state["step"], losses, self.cfg.batch_size, self.flops)
        if record is None:
            return
        record["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate the last step really used
        self.state["last_loss"] = record["loss"]
        if self.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(f"train/{k}", v, record["step"])

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.state["step"]
        rnd = StepRandom(cfg.seed, step, self.rank, self.device)
        batch = batch_from(self.train_set, self.order.indices(step, self.rank, self.world), self.device)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.accelerator.autocast():
            losses = step_loss(cfg, self.train_model, self.diffusion, batch, rnd, self.info)
            loss = losses["loss"].mean()
            if self.adversary is not None:
                real, fake, low = losses.pop("windows")
                losses["adv"] = self.adversary.generator_loss(fake, low)
                loss = loss + losses["adv"]
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if cfg.grad_clip:
            self.accelerator.clip_grad_norm_(self.train_model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.adversary is not None:  # after the upsampler's step, on the windows it made before it (fp32: it is small)
            losses["disc"] = self.adversary.discriminator_step(real, fake, low, lr, self.accelerator.backward)
        update_ema(self.ema, self.model, cfg.ema_decay, step + 1)
        self.state["step"] = step + 1
        self.state["images_seen"] += cfg.batch_size
        self.window.add(loss)
        return losses

    def _one_step(self, budget: Budget, bar) -> dict:
        cfg = self.cfg
        losses = self.train_step()
        step = self.state["step"]
        budget.tick()
        bar.total = budget.expected_steps()  # the budget that will really stop the run
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            self.log(losses)
            if self.is_main:
                bar.set_postfix(loss=f"{self.state['last_loss']:.4f}", ips=f"{self.window.last_ips:.1f}")
        if cfg.save_every and step % cfg.save_every == 0:
            self.save()
        if cfg.sample_every and step % cfg.sample_every == 0:
            self.sample()
        return losses

    def run(self) -> dict:
        cfg = self.cfg
        budget = self.budget = Budget(cfg.max_steps, cfg.max_minutes, self.state, started=self.created)
        bar = tqdm(total=budget.expected_steps(), initial=self.state["step"], desc="train",
                   disable=not (cfg.progress and self.is_main))
        losses: dict = {}
        self.train_model.train()
        stop = StopSignal()
        with stop:
            while not budget.exhausted() and not stop.received:
                losses = self._one_step(budget, bar)
        if stop.received:
            budget.reason = f"stopped by {stop.received} at step {self.state['step']}"
        if budget.reason:
            self.accelerator.print(budget.reason)
        self.log(losses)
        bar.close()
        self.save()
        self.sample()
        if self.writer is not None:
            self.writer.close()
        return {"step": self.state["step"], "images_seen": self.state["images_seen"], "out": str(self.out),
                "last_loss": self.state.get("last_loss")}


def scheduled_lr(cfg: TrainConfig, step: int, warmup_from: int, seconds_left: float) -> float:
    """The learning rate of `step`: a linear warm-up over cfg.warmup_steps starting at
    `warmup_from` (0, or where a cooled-down run resumed), then constant, then a linear
    cool-down to 0 over the last cfg.lr_cooldown_minutes before the time budget ends.
    The cool-down follows the clock, not a step count, because the run ends by the clock."""
    warm = min(1.0, (step + 1 - warmup_from) / max(1, cfg.warmup_steps))
    cool = 1.0
    if cfg.lr_cooldown_minutes > 0 and math.isfinite(seconds_left):
        cool = min(1.0, max(0.0, seconds_left) / (cfg.lr_cooldown_minutes * 60))
    return cfg.lr * warm * cool


class StopSignal:
    """SIGTERM or SIGINT (Ctrl-C) ends the run at the next step boundary, with its
    checkpoint, as a time budget would; a second one stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self.previous: dict = {}

    def handle(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Budget:
    """Stops the run at max_steps or when max_minutes of wall time have passed since
    `started` (the process's start of the run: data loading and the prior's g(y) count,
    so that `--max-minutes` ends the run when the launcher said), after at least one step
    in this process; estimates the step at which that will happen (for the progress bar)."""

    def __init__(self, max_steps: int, max_minutes: float, state: dict, started: float | None = None):
        self.max_steps, self.max_minutes, self.state = max_steps, max_minutes, state
        self.start, self.first_step = time.time(), state["step"]
        self.deadline = (started or self.start) + max_minutes * 60
        self.seconds_before = state["train_seconds"]
        self.reason = ""

    def elapsed(self) -> float:
        return time.time() - self.start

    def tick(self) -> None:
        self.state["train_seconds"] = self.seconds_before + self.elapsed()

    def exhausted(self) -> bool:
        if self.state["step"] >= self.max_steps:
            return True
        stepped = self.state["step"] > self.first_step
        if self.max_minutes and stepped and time.time() >= self.deadline:
            self.reason = f"time budget of {self.max_minutes} min reached at step {self.state['step']}"
            return True
        return False

    def seconds_left(self) -> float:
        return self.deadline - time.time() if self.max_minutes else math.inf

    def expected_steps(self) -> int:
        done = self.state["step"] - self.first_step
        if not self.max_minutes or done == 0:
            return self.max_steps
        rate = done / max(self.elapsed(), 1e-9)
        return min(self.max_steps, self.state["step"] + int(rate * max(self.deadline - time.time(), 0)))


class LogWindow:
    """Loss and throughput accumulated since the last log line (no host sync per step)."""

    def __init__(self, device):
        self.device = device
        self.last_ips = 0.0
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.start = torch.zeros((), device=self.device), 0, time.time()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach()
        self.steps += 1

    def record(self, step: int, losses: dict, batch_size: int, flops: float) -> dict | None:
        if not self.steps:
            return None
        elapsed = max(time.time() - self.start, 1e-9)
        images = self.steps * batch_size
        self.last_ips = images / elapsed
        record = {
            "step": step,
            "loss": self.loss.item() / self.steps,
            "mse": losses["mse"].mean().item(),
            "vb": losses["vb"].mean().item() if "vb" in losses else None,
            # --sr-adversarial: "loss" is L1 + the weighted term; the two parts and the discriminator's loss
            **({"l1": losses["loss"].mean().item(), "adv": losses["adv"].item(), "disc": losses["disc"].item()}
               if "adv" in losses else {}),
            "images_per_second": self.last_ips,
            "tflops": 3 * flops * images / elapsed / 1e12,  # backward ~ 2x forward
        }
        self.reset()
        return record


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).run()


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

    side = (cfg.patch_size or cfg.size) if cfg.task == "superres" else cfg.size  # what one training sample costs
    x = torch.zeros(1, 3, side, side, device=device)
    kwargs = {}
    if model.config.id_dim:
        kwargs["id_vector"] = torch.zeros(1, model.config.id_dim, device=device)
    if model.config.extra_cond_channels:
        kwargs["cond_image"] = torch.zeros(1, model.config.extra_cond_channels, side, side, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(1, dtype=torch.long, device=device), **kwargs)
    return float(counter.get_total_flops())
