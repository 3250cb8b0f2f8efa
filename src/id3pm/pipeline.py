"""The inversion pipeline: identity vectors (or face photos) in, face images out.

    pipe = ID3PMPipeline.from_pretrained("runs/utk/model")
    out = pipe(vectors, num_images_per_id=4, guidance_scale=2.0, num_inference_steps=25, seed=0)
    out.images  # (N, 4, 64, 64, 3) uint8, canonical crops

Image i of seed s starts from the noise of generator seed s + i and draws all its
later noise from it, so it is the same picture whatever the batch size, and the
same seeds across identities or guidance scales give comparable pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from id3pm.diffusion import GaussianDiffusion, make_betas
from id3pm.encoders import EncodeResult, Encoder, check_vectors, identity_distance, make_encoder, parse_encoder_spec
from id3pm.images import tensor_to_uint8
from id3pm.modeldir import load_model_dir, shipped_path
from id3pm.prior import as_input as prior_as_input
from id3pm.prior import PRIOR_START, prior_folder, prior_images
from id3pm.sampling import (DEFAULT_SAMPLER, FirstStepInFP32, get_sampler, guided_denoiser, make_generators,
                             per_image_noise, sampling_grid, start_of_sampling)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class PipelineOutput:
    images: np.ndarray  # (N, K, H, W, 3) uint8: K samples for each of N identities
    seeds: list[int]  # seed of each of the K columns
    params: dict = field(default_factory=dict)  # what produced them (for PNG metadata and JSON)
    upscaled: np.ndarray | None = None  # (N, K, S, S, 3) after the super-resolution stage, if asked for


def _shown(out: PipelineOutput) -> np.ndarray:
    """The pictures to show: upscaled when the super-resolution stage ran."""
    return out.upscaled if out.upscaled is not None else out.images


def adapted_encoder(info: dict, encoder, adapter):
    """(encoder spec or None, Adapter or None) for from_pretrained: an encoder other than
    the model's needs an adapter, and an adapter must match both ends. Nothing is built
    here: the pipeline builds its encoder when it first needs one."""
    spec = parse_encoder_spec(encoder) if isinstance(encoder, str) else (None if encoder is None else dict(encoder))
    if adapter is None:
        if spec is not None and spec["name"] != info["encoder"]["name"]:
            raise ValueError(f"the model is conditioned on {info['encoder']['name']} vectors; to invert "
                             f"{spec['name']} templates pass an adapter (`id3pm adapt`)")
        return spec, None
    from id3pm.adapter import Adapter

    adapt = Adapter.load(adapter)
    spec = spec or dict(adapt.config.source)
    adapt.check(spec["name"], info["encoder"], int(info["id_dim"]), where=f"adapter {adapter}")
    return spec, adapt


class ID3PMPipeline:
    def __init__(self, model: torch.nn.Module, info: dict, device: str | torch.device = "cpu", encoder: Encoder | None = None,
                 precision: str = "auto", prior: torch.nn.Module | None = None, prior_start: float = PRIOR_START,
                 adapter=None):
        """prior: the regression decoder g(y) of a model trained with `--prior` (id3pm.prior).
        prior_start: with a prior, sampling starts from g(y) noised to this fraction of the
        schedule instead of from pure noise at its end (id3pm.prior.PRIOR_START: why).
        adapter: an id3pm.adapter.Adapter from another FR model's space into the model's:
        the pipeline then takes, encodes and judges by that model's templates (id_dim is
        its length) and maps them into the conditioning space just before the network."""
        if info.get("prior") and prior is None:
            raise ValueError("this model was trained with a regression prior: pass prior=")
        if not 0 < prior_start <= 1:
            raise ValueError(f"prior_start must be in (0, 1], got {prior_start}")
        self.prior = prior
        self.prior_start = prior_start
        # channels_last: oneDNN / cuDNN convolutions run faster in NHWC (measured: benchmarks/sampling.py)
        self.model = model.to(memory_format=torch.channels_last)
        self.info = info
        self.device = torch.device(device)
        self.diffusion = GaussianDiffusion(make_betas(info["diffusion"]["schedule"], info["diffusion"]["num_timesteps"]))
        self._encoder = encoder
        self.encoder_spec: dict | None = None  # what to build when no encoder is given (from_pretrained's encoder=)
        self.image_size = int(info["image_size"])
        self.id_dim = int(info["id_dim"])  # the length of the templates the pipeline takes
        self.adapter = adapter
        if adapter is not None:
            adapter.check(getattr(encoder, "name", None), info["encoder"], self.id_dim)
            self.id_dim = adapter.config.source_dim
        self.model_path: str | None = None
        self.upscaler = None  # id3pm.superres.DiffusionUpscaler or LanczosUpscaler, for upscale=True
        if precision == "auto":  # bf16 where it is free of doubt (GPU); on CPUs it is opt-in
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.precision = precision

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None, precision: str = "auto",
                        prior_start: float = PRIOR_START, encoder: str | dict | None = None,
                        adapter: str | Path | None = None, upscale: str | None = "default"):
        """Load a model folder; path=None takes the shipped reference model. precision:
        "fp32", "bf16" (autocast; about 2.2x faster on a CPU with AVX512-BF16, noise
        predictions within ~0.05 of fp32) or "auto" (bf16 on GPU, fp32 on CPU).
        encoder + adapter: invert another FR model's templates through an adapter folder
        (`id3pm adapt`); a mismatched pair is refused. upscale: the super-resolution stage
        (id3pm.superres.make_upscaler): "default" is the shipped upsampler when one fits the
        model, else none; None or "none" for none."""
        from id3pm.superres import make_upscaler

        if path is None:
            path = shipped_path("base")
            if path is None:
                raise FileNotFoundError("no model given and no shipped model in weights/: pass --model DIR")
        device = device or default_device()
        model, info = load_model_dir(path, device=device)
        if info.get("task") not in ("base", "regression"):
            raise ValueError(f"{path}: a {info.get('task')!r} model is not an identity-conditioned generator")
        prior = load_model_dir(prior_folder(path), device=device)[0] if info.get("prior") else None
        spec, adapt = adapted_encoder(info, encoder, adapter)
        pipe = cls(model, info, device, precision=precision, prior=prior, prior_start=prior_start, adapter=adapt)
        pipe.encoder_spec = spec
        pipe.model_path = str(path)
        pipe.upscaler = make_upscaler(upscale, device, base_info=info)
        return pipe

    # -- the black box --------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The black box whose templates the pipeline takes: the one the model was conditioned
        on, or the adapter's source encoder (built lazily)."""
        if self._encoder is None:
            self._encoder = make_encoder(dict(self.template_spec()))
        return self._encoder

    def template_spec(self) -> dict:
        """The spec of that black box: from_pretrained's encoder=, else the adapter's source,
        else the model's own encoder."""
        return self.encoder_spec or (self.adapter.config.source if self.adapter is not None else self.info["encoder"])

    @property
    def template_encoder(self) -> str:
        """The name of the FR model whose templates the pipeline takes (without building it)."""
        return self.template_spec()["name"]

    @property
    def template_distance(self) -> str:
        """How the template encoder's vectors are compared ("euclidean" or "cosine")."""
        return self.encoder.distance if self.adapter is not None else self.info.get("distance", "euclidean")

    def encode(self, images: Sequence[np.ndarray], aligned: bool = False, keys=None) -> EncodeResult:
        return self.encoder.encode(images, aligned=aligned, keys=keys)

    def identity_distances(self, images: np.ndarray, id_vectors: np.ndarray) -> np.ndarray:
        """(N, K) distance of each generated image to its identity vector under the
        conditioning encoder (NaN where the encoder fails on an image)."""
        n, k = images.shape[:2]
        if not self.encoder.encodes_pixels:  # a lookup table cannot encode new images
            return np.full((n, k), np.nan)
        flat = list(images.reshape(n * k, *images.shape[2:]))
        vectors = self.encoder.encode(flat, aligned=True).vectors.reshape(n, k, -1)
        return identity_distance(vectors, np.asarray(id_vectors)[:, None, :], self.template_distance)

    # -- generation ---------------------------------------------------------------------
    def _attributes(self, attributes, n: int, unset: str = "drop", seed: int = 0):
        """User attributes {name: value} or (N, A) with NaN = unset -> normalised tensor + mask.
        unset = "drop": the model decides (attribute dropped, as in training with
        attribute dropout); "sample": take the values of a random training face."""
        spec = self.info.get("attributes")
        if not spec:
            if attributes:
                raise ValueError("this model was trained without attributes")
            return None, None
        names = spec["names"]
        values = np.full((n, len(names)), np.nan, dtype=np.float32)
        if isinstance(attributes, dict):
            for name, value in attributes.items():
                if name not in names:
                    raise ValueError(f"unknown attribute {name!r}; this model knows {names}")
                values[:, names.index(name)] = value
        elif attributes is not None:
            values[:] = np.asarray(attributes, dtype=np.float32).reshape(-1, len(names))
        if unset == "sample" and spec.get("samples"):
            pool = np.asarray(spec["samples"], dtype=np.float32)
            picks = pool[np.random.default_rng(seed).integers(0, len(pool), n)]
            values = np.where(np.isfinite(values), values, picks)
        elif unset not in ("drop", "sample"):
            raise ValueError(f"unset must be 'drop' or 'sample', got {unset!r}")
        mask = np.isfinite(values).astype(np.float32)
        normed = (np.nan_to_num(values) - np.array(spec["mean"])) / np.array(spec["std"]) * mask
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        return as_tensor(normed), as_tensor(mask)

    @torch.inference_mode()
    def __call__(
        self,
        id_vectors,
        num_images_per_id: int = 4,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 25,
        sampler: str = DEFAULT_SAMPLER,
        seed: int = 0,
        attributes=None,
        unset_attributes: str = "drop",
        batch_size: int = 32,
        progress: bool = False,
        upscale: bool | None = None,
        upscale_steps: int = 25,
    ) -> PipelineOutput:
        """upscale: run the super-resolution stage too (None: when an upscaler is set, as
        `from_pretrained` sets the shipped one that fits the model)."""
        vectors = check_vectors(id_vectors, self.id_dim, "id_vectors")
        if not 1 <= num_inference_steps <= self.diffusion.num_timesteps:
            raise ValueError(f"num_inference_steps must be in 1..{self.diffusion.num_timesteps}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError("guidance_scale must be a finite number >= 0")
        n, k = len(vectors), int(num_images_per_id)
        attrs, mask = self._attributes(attributes, n, unset_attributes, seed)
        jobs = [(i, j) for i in range(n) for j in range(k)]  # (identity, sample)
        images = np.zeros((n, k, self.image_size, self.image_size, 3), dtype=np.uint8)
        for start in tqdm(range(0, len(jobs), batch_size), desc="generating", disable=not progress):
            chunk = jobs[start : start + batch_size]
            ids = np.array([i for i, _ in chunk])
            out = self.render(vectors[ids], [seed + j for _, j in chunk], guidance_scale, num_inference_steps,
                              sampler, None if attrs is None else attrs[ids], None if mask is None else mask[ids])
            for (i, j), img in zip(chunk, out):
                images[i, j] = img
        params = {
            "guidance_scale": guidance_scale,
            "num_inference_steps": num_inference_steps,
            "sampler": sampler,
            # the grid every sampler walks (UniPC included): the original timesteps kept by respacing
            "timesteps": sorted((int(t) for t in sampling_grid(self.diffusion.num_timesteps, num_inference_steps,
                                                                self.prior_start if self.prior is not None else 1.0)),
                                reverse=True),
            "seed": seed,
            "model": self.model_path,
            "encoder": self.encoder.name if self.adapter is not None else self.info["encoder"].get("name"),
            "precision": self.precision,
        }
        if self.adapter is not None:
            params["adapter"] = {"from": self.adapter.config.source["name"], "kind": self.adapter.config.kind}
        if self.prior is not None:  # where sampling started: g(y) noised to this fraction of the schedule
            params["prior_start"] = self.prior_start
        if attributes is not None:
            params["attributes"] = attributes if isinstance(attributes, dict) else np.asarray(attributes).tolist()
        upscaled = None
        if upscale or (upscale is None and self.upscaler is not None):
            seeds = np.tile(np.arange(k) + seed, n)  # the base sample's seed fixes the SR noise too
            flat = self.upscale(images.reshape(n * k, *images.shape[2:]), np.repeat(vectors, k, axis=0), seeds,
                                upscale_steps)
            upscaled = flat.reshape(n, k, *flat.shape[1:])
            params["upscale"] = self.upscaler.label
        return PipelineOutput(images, [seed + j for j in range(k)], params, upscaled)

    def upscale(self, images: np.ndarray, vectors: np.ndarray, seeds, num_inference_steps: int = 25) -> np.ndarray:
        """The super-resolution stage on (B, h, w, 3) images made from vectors[b] (the
        caller's templates) and seeds[b]. An upsampler trained with y gets each image's
        vector in the base model's space (through the adapter, when there is one)."""
        if self.upscaler is None:
            raise ValueError("upscale=True but no upscaler is set (pipe.upscaler = make_upscaler(...))")
        y = np.asarray(vectors, dtype=np.float32)
        if self.adapter is not None:
            y = self.adapter(y)
        ours = self.info["encoder"].get("name")
        if not self.upscaler.takes_templates_of(ours):
            raise ValueError(f"the upsampler is conditioned on {self.upscaler.info['encoder'].get('name')} vectors, "
                             f"the base model on {ours}")
        return self.upscaler(images, seeds, num_inference_steps=num_inference_steps, id_vectors=y)

    @torch.inference_mode()
    def render(self, vectors: np.ndarray, seeds, guidance_scale: float = 2.0, num_inference_steps: int = 25,
               sampler: str = DEFAULT_SAMPLER, attributes: torch.Tensor | None = None,
               attr_mask: torch.Tensor | None = None, start_images: np.ndarray | None = None,
               strength: float = 1.0) -> np.ndarray:
        """One batch: image b from vector vectors[b] and its own generator seeded with
        seeds[b] (all its noise, so it does not depend on the rest of the batch).
        (B, D) validated vectors -> (B, H, W, 3) uint8. attributes/attr_mask are the
        normalised tensors of `_attributes`. start_images (B, H, W, 3) uint8: re-noise
        them to the fraction `strength` of the schedule and denoise from there (SDEdit,
        Meng et al. 2022) instead of starting from pure noise."""
        gens = make_generators(seeds)
        x = per_image_noise(gens, (3, self.image_size, self.image_size), self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.adapter is not None:  # templates of another FR model -> the conditioning space
            vectors = self.adapter(vectors)
        y = torch.as_tensor(vectors, device=self.device)
        start = None
        if start_images is not None:
            start = torch.as_tensor(np.asarray(start_images), device=self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self._render(x, y, gens, guidance_scale, num_inference_steps, sampler, attributes, attr_mask,
                                start, strength)

    def _render(self, x, y, gens, guidance_scale, num_inference_steps, sampler, attributes, attr_mask,
                start=None, strength=1.0) -> np.ndarray:
        if self.info.get("task") == "regression":  # the one-to-one baseline decoder g(y)
            return tensor_to_uint8(self.model.regress(y)[:, :3])
        prior = None if self.prior is None else prior_as_input(prior_images(self.prior, y), self.device)
        if start is None and prior is not None and self.prior_start < 1:  # id3pm.prior.PRIOR_START
            start, strength = prior, self.prior_start
        diffusion, x = start_of_sampling(self.diffusion, num_inference_steps, x, start, strength)
        x = x.contiguous(memory_format=torch.channels_last)
        denoise = guided_denoiser(self.model, y, guidance_scale, attributes=attributes, attr_mask=attr_mask,
                                  prior_image=prior)
        denoise = FirstStepInFP32(denoise)
        return tensor_to_uint8(get_sampler(sampler)(denoise, diffusion, x, gens)[:, :3])

    def refine(self, id_vectors, queries: int, **kwargs):
        """Spend `queries` black-box queries per identity (best-of-N or the re-noising
        search); returns an id3pm.refine.RefineResult. See `id3pm.refine.query_refine`."""
        from id3pm.refine import query_refine

        return query_refine(self, id_vectors, queries, **kwargs)

    def invert(self, photos: Sequence[np.ndarray], aligned: bool = False, keys=None, **kwargs):
        """Encode photos with the black box, then generate from their vectors.
        Returns (EncodeResult, PipelineOutput for the photos that were encoded)."""
        enc = self.encode(photos, aligned=aligned, keys=keys)
        ok = enc.ok
        if not ok.any():
            return enc, None
        return enc, self(enc.vectors[ok], **kwargs)

    # -- controls (each also an `id3pm` command) -------------------------------------------
    def distances_to(self, images: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Identity distance of (..., H, W, 3) images to one vector."""
        flat = images.reshape(-1, *images.shape[-3:])
        d = self.identity_distances(flat[:, None], np.repeat(np.asarray(vector)[None], len(flat), 0))
        return d.reshape(images.shape[:-3])

    def sweep(self, vector, guidance_scales=(1.0, 1.5, 2.0, 2.5, 3.0), num_seeds: int = 4, seed: int = 0, **kwargs):
        """The paper's Fig. 5: rows seeds, columns guidance scales, the same seeds in every
        column. Returns (images (seeds, scales, H, W, 3), identity distances (seeds, scales))."""
        v = check_vectors(vector, self.id_dim, "vector")
        cols = [_shown(self(v, num_images_per_id=num_seeds, guidance_scale=g, seed=seed, **kwargs))[0]
                for g in guidance_scales]
        images = np.stack(cols, axis=1)
        return images, self.distances_to(images, v[0])

    def interpolate(self, a, b, frames: int = 9, seed: int = 0, **kwargs):
        """Frames from identity a to b with one fixed seed. Returns (images (F, H, W, 3),
        vectors (F, D), distance to a (F,), distance to b (F,))."""
        from id3pm.controls import interpolate

        va, vb = check_vectors(a, self.id_dim, "a")[0], check_vectors(b, self.id_dim, "b")[0]
        vectors = interpolate(va, vb, frames)
        images = _shown(self(vectors, num_images_per_id=1, seed=seed, **kwargs))[:, 0]
        return images, vectors, self.distances_to(images, va), self.distances_to(images, vb)

    def edit(self, vector, direction, strengths=(-2, -1, 0, 1, 2), num_images: int = 1, seed: int = 0, **kwargs):
        """Walk an identity along a direction. Returns (images (strengths, K, H, W, 3),
        vectors (strengths, D), distance to the unedited vector (strengths, K))."""
        from id3pm.controls import walk

        v = check_vectors(vector, self.id_dim, "vector")[0]
        d = check_vectors(direction, self.id_dim, "direction")[0]
        vectors = walk(v, d, strengths)
        images = _shown(self(vectors, num_images_per_id=num_images, seed=seed, **kwargs))
        return images, vectors, self.distances_to(images, v)
