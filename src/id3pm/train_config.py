"""The settings of one training run (`id3pm train` flags are generated from these
fields and their comments). Kept free of torch so that `id3pm --help` stays fast."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    data: str  # prepared data set folder (id3pm prepare)
    out: str  # run folder: checkpoint/, model/, samples/, log.jsonl, tb/
    task: str = "base"  # "base": ID-conditioned diffusion; "superres": upsampler; "regression": baseline decoder
    size: int = 64  # image side to train on
    cond_size: int = 0  # superres: low-resolution side (0: size // 2)
    patch_size: int = 0  # superres: train on random windows of this side (0: whole images); it samples whole images
    sr_residual: float = 0.0  # superres: diffuse (high - bicubic(low)) x this (SRDiff; 3 brings its std near an image's); 0: the image
    sr_regression: bool = False  # superres: predict the detail in one pass with an L1 loss instead of diffusing it (no sampling steps)
    sr_adversarial: float = 0.0  # superres with --sr-regression: weight of a conditional patch-discriminator term beside L1 (sharper detail); 0: L1 only
    sr_identity: bool = False  # superres: also condition on y (dropped with --cond-drop), so the upsampler can use identity
    preset: str = "base"  # network size (id3pm.modeldir.PRESETS): tiny, mini, compact, small, base, large; sr for upsamplers
    model: dict = field(default_factory=dict)  # overrides of the preset's network arguments
    schedule: str = "cosine"  # noise schedule
    num_timesteps: int = 1000  # diffusion steps T
    vlb_weight: float = 0.001  # lambda of the hybrid loss
    loss_weighting: str = ""  # weights of the eps loss over t (id3pm.diffusion.weighting): "" uniform, "p2", "min_snr"
    cond_drop: float = 0.1  # probability of replacing y by the null condition (classifier-free guidance)
    cond_noise: float = 0.0  # Gaussian noise on y in training, its norm this fraction of y's mean norm
    balance: str = ""  # balanced draws: "source" and/or "age" (e.g. "source,age"); empty: plain epochs
    attr_drop: float = 0.1  # probability of dropping each attribute group
    null_condition: str = "zero"  # "zero" (the paper) or "learned"
    batch_size: int = 64  # global batch (split over processes)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 500  # linear learning-rate warm-up
    lr_cooldown_minutes: float = 0.0  # linear decay of the learning rate to 0 over the last N minutes of --max-minutes
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.9999  # EMA of the weights (with a 1+k / 10+k warm-up)
    max_steps: int = 100_000  # stop after this many steps ...
    max_minutes: float = 0.0  # ... or after this much wall time (0: no limit)
    save_every: int = 1000  # checkpoint + exported model every N steps
    sample_every: int = 2000  # sample grid every N steps (0: only at the end)
    log_every: int = 50  # log line every N steps
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU and CPUs with native bf16), "no", "bf16", "fp16"
    compile: bool = False  # torch.compile the network
    init_from: str = ""  # warm start: a model folder whose weights to start from (fresh optimizer)
    prior: str = ""  # base task: a regression model folder whose g(y) the network also sees (DiffuseVAE)
    augment_level_max: float = 0.5  # superres: max noise-augmentation level of the low-res input (0..1)
    progress: bool = True


def field_comments(cls=TrainConfig) -> dict[str, str]:
    """{field name: its trailing comment} from the source: the flags' help texts."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and "#" in rest and name.isidentifier():
            out[name] = rest.split("#", 1)[1].strip()
    return out

