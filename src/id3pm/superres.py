"""Super-resolution stage: a diffusion upsampler after the base model (ID3PM's Fig. 2;
ADM's super-resolution models; cascaded diffusion, Ho et al. 2021).

The SR network sees the noisy high-resolution image concatenated with the bicubically
upsampled low-resolution input; it may diffuse the whole image or only the residual
high - bicubic(low) (SRDiff, Li et al. 2022), which leaves colours and shapes to the input
and learns far faster per CPU-hour. ID3PM's upsampler sees no identity; ours may also
take y (`id3pm train --task superres --sr-identity yes`, y dropped 10% of the time as in
the base model), since a 32 px face leaves most of what an FR model reads to be invented.
`--sr-regression` trains the same network to predict the detail in one pass with an L1
loss (the SR-CNN way, EDSR and after): no sampling steps, sharp where the input decides
the detail and its median where it does not, where diffusion draws one possibility.
In training the low-resolution input is corrupted by the forward process at a random
level ("noise-conditioning augmentation") and the level is an input, so that the errors
of the base model do not compound; at sampling time a small level (default 0) is used.

Without SR weights, `LanczosUpscaler` is the labelled fallback.
"""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from id3pm.diffusion import GaussianDiffusion, make_betas, respace, space_timesteps
from id3pm.images import tensor_to_uint8, uint8_to_tensor
from id3pm.modeldir import load_model_dir, shipped_path
from id3pm.sampling import get_sampler, guided_denoiser, make_generators, per_image_noise

SR_SEED_OFFSET = 7_919  # the SR noise of image seed s comes from seed s + this: fixed by s, not equal to it


class LanczosUpscaler:
    """Plain Lanczos resampling: what is used when no SR model is available."""

    label = "lanczos (no super-resolution model)"

    def __init__(self, size: int = 128):
        self.size = size

    def takes_templates_of(self, encoder: str | None) -> bool:
        return True  # it reads no vectors

    def __call__(self, images: np.ndarray, seeds=None, **kwargs) -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(im).resize((self.size, self.size), Image.LANCZOS)) for im in images])


class DiffusionUpscaler:
    def __init__(self, model, info: dict, device="cpu"):
        self.model, self.info, self.device = model, info, torch.device(device)
        self.size = int(info["image_size"])
        self.diffusion = GaussianDiffusion(make_betas(info["diffusion"]["schedule"], info["diffusion"]["num_timesteps"]))
        # conditioned on y as well as on the low-res image (trained with --sr-identity)
        self.uses_identity = bool(getattr(getattr(model, "config", None), "id_dim", 0))
        # trained with --sr-regression: one pass predicts the detail (seeds and steps do not matter)
        self.regression = info.get("objective") == "regression"
        kind = "regression" if self.regression else "diffusion"
        self.label = f"{kind} super-resolution {info.get('cond_size')}->{self.size}"
        if self.uses_identity:
            self.label += " with identity"
        # what a folder's id3pm.json chose for its sampling ("upscale_defaults": guidance_scale,
        # detail_strength, back_projection), measured before it shipped; arguments override them
        self.defaults = {"guidance_scale": 1.0, "detail_strength": 1.0, "back_projection": 0,
                         **info.get("upscale_defaults", {})}

    def takes_templates_of(self, encoder: str | None) -> bool:
        """Whether it can be given that encoder's vectors (one trained without y reads none)."""
        return not self.uses_identity or self.info["encoder"].get("name") == encoder

    @classmethod
    def from_pretrained(cls, path, device: str | None = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, info = load_model_dir(path, device=device)
        if info.get("task") != "superres":
            raise ValueError(f"{path}: a {info.get('task')!r} model is not a super-resolution model")
        up = cls(model, info, device)
        up.label += f" ({path})"
        return up

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, seeds, num_inference_steps: int = 25, sampler: str = "ddpm",
                 aug_level: float = 0.0, batch_size: int = 16, id_vectors: np.ndarray | None = None,
                 guidance_scale: float | None = None, detail_strength: float | None = None,
                 back_projection: int | None = None) -> np.ndarray:
        """(N, h, w, 3) uint8 -> (N, size, size, 3) uint8; image i uses seed seeds[i].
        Ancestral DDPM by default, as ADM and SR3 sample their upsamplers: the injected
        noise corrects early mistakes, where deterministic solvers carry them along.
        id_vectors (N, D): the identity of each image, for an upsampler trained with y
        (ignored by one without); without them such an upsampler runs unconditionally, as
        it was trained to with y dropped. guidance_scale > 1 pushes towards y (CFG).
        detail_strength: the share of the predicted detail added to the bicubic input (1: all
        of it, 0: bicubic; as Real-ESRGAN's denoise strength and CodeFormer's fidelity weight
        trade texture against faithfulness). back_projection: rounds of iterative back-projection
        (Irani & Peleg 1991), which pull the output's 4x4 means onto the input's pixels.
        None: the folder's upscale_defaults."""
        if id_vectors is not None and len(id_vectors) != len(images):
            raise ValueError(f"{len(id_vectors)} id_vectors for {len(images)} images")
        guidance_scale = self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        strength = self.defaults["detail_strength"] if detail_strength is None else detail_strength
        rounds = int(self.defaults["back_projection"] if back_projection is None else back_projection)
        if not self.info.get("residual") and strength != 1:
            raise ValueError("detail_strength needs an upsampler trained on the residual (--sr-residual)")
        diffusion = respace(self.diffusion, space_timesteps(self.diffusion.num_timesteps, num_inference_steps))
        sample = get_sampler(sampler)
        out = []
        for s in range(0, len(images), batch_size):
            low = uint8_to_tensor(images[s : s + batch_size]).to(self.device)
            cond = torch.nn.functional.interpolate(low, size=(self.size, self.size), mode="bicubic",
                                                   align_corners=False).clamp(-1, 1)
            base, scale = (cond, self.info["residual"]) if self.info.get("residual") else (0, 1)  # detail + clean bicubic
            gens = make_generators([int(x) + SR_SEED_OFFSET for x in seeds[s : s + batch_size]])
            level = torch.full((len(low),), float(aug_level), device=self.device)
            if aug_level > 0:  # the same corruption the network was trained to see through
                lt = torch.full((len(low),), int(aug_level * (self.diffusion.num_timesteps - 1)), device=self.device)
                cond = self.diffusion.q_sample(cond, lt, per_image_noise(gens, cond.shape[1:], self.device))
            x = per_image_noise(gens, (3, self.size, self.size), self.device)
            denoise = self._denoiser(cond, level * 1000, None if id_vectors is None else id_vectors[s : s + batch_size],
                                     guidance_scale)
            if self.regression:
                detail = denoise(torch.zeros_like(x), torch.zeros(len(x), dtype=torch.long, device=self.device))
            else:
                detail = sample(denoise, diffusion, x, gens)
            high = back_project(detail[:, :3] / scale * strength + base, low, rounds)
            out.append(tensor_to_uint8(high.clamp(-1, 1)))
        return np.concatenate(out)

    def _denoiser(self, cond: torch.Tensor, level: torch.Tensor, id_vectors, guidance_scale: float):
        if not self.uses_identity:
            return lambda xt, t: self.model(xt, t, cond_image=cond, level=level)
        if id_vectors is None:  # unconditional: y dropped, as 10% of the training steps saw it
            guidance_scale, id_vectors = 0.0, np.zeros((len(cond), self.model.config.id_dim), np.float32)
        y = torch.as_tensor(np.asarray(id_vectors, np.float32), device=self.device)
        return guided_denoiser(self.model, y, guidance_scale, shared={"cond_image": cond, "level": level})


def back_project(high: torch.Tensor, low: torch.Tensor, rounds: int) -> torch.Tensor:
    """high + bicubic(low - area(high)), `rounds` times: the output keeps its detail, and its
    downsampled self moves onto the input (the input is what the base model chose)."""
    for _ in range(rounds):
        error = low - torch.nn.functional.interpolate(high, size=low.shape[-2:], mode="area")
        high = high + torch.nn.functional.interpolate(error, size=high.shape[-2:], mode="bicubic", align_corners=False)
    return high


def shipped_upscaler_for(base_info: dict, device: str | None = None):
    """The shipped upsampler when one ships and fits a base model with this id3pm.json: its
    input side is the model's output side and, if it was trained with y, y comes from the
    model's encoder. Else None. 128 px output by default only where a trained upsampler
    ships and beat Lanczos (#26); never Lanczos by default."""
    path = shipped_path("superres")
    if path is None:
        return None
    up = DiffusionUpscaler.from_pretrained(path, device)
    fits = up.info.get("cond_size") == base_info["image_size"] and up.takes_templates_of(base_info["encoder"].get("name"))
    return up if fits else None


def make_upscaler(spec: str | None, device: str | None = None, size: int = 128, base_info: dict | None = None):
    """"lanczos", a SR model folder, "auto" (the shipped SR model if it fits, else Lanczos), or
    "default" (the shipped SR model if it fits the base model of base_info, else none)."""
    if spec in (None, "", "none"):
        return None
    if spec == "default":
        return shipped_upscaler_for(base_info, device) if base_info is not None else None
    if spec == "lanczos":
        return LanczosUpscaler(size)
    if spec == "auto":  # the shipped SR model (where it fits the base model, when that is known), else Lanczos
        if base_info is not None:
            up = shipped_upscaler_for(base_info, device)
        else:
            path = shipped_path("superres")
            up = DiffusionUpscaler.from_pretrained(path, device) if path else None
        return up or LanczosUpscaler(size)
    return DiffusionUpscaler.from_pretrained(spec, device)
