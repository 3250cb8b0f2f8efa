"""What every reconstruction method is compared with. All methods share one call:

    method.reconstruct(vectors (N, D), num_samples K, seed) -> images (N, K, S, S, 3) uint8

- GenerativeMethod: an id3pm model folder (ID-conditioned diffusion, or the paper's
  Eq. 4 regression decoder g(y) trained with `id3pm train --task regression`);
- NearestNeighbour: the training images whose vectors are closest (retrieval: a
  generator must beat it to be worth anything);
- RefinedMethod: a model plus black-box queries at inversion time (id3pm.refine);
- RandomImages: random training images (the lower bound);
- the originals themselves give the upper bound (see evaluate.py).
"""

from __future__ import annotations

import numpy as np

from id3pm.encoders import identity_distance
from id3pm.images import resize


class GenerativeMethod:
    def __init__(self, name: str, pipe, guidance_scale: float = 2.0, steps: int = 25, sampler: str = "dpmpp_2m",
                 batch_size: int = 32, prior_start: float | None = None):
        self.name, self.pipe = name, pipe
        self.guidance_scale, self.steps, self.sampler, self.batch_size = guidance_scale, steps, sampler, batch_size
        self.generative = pipe.info.get("task") != "regression"
        # a model with a prior: where sampling starts (g(y) noised to this fraction of the
        # schedule; 1.0 is pure noise); None keeps the pipeline's own
        self.prior_start = prior_start

    def reconstruct(self, vectors: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        own = getattr(self.pipe, "prior_start", None)
        if self.prior_start is not None:
            self.pipe.prior_start = self.prior_start
        try:
            out = self.pipe(vectors, num_images_per_id=num_samples, guidance_scale=self.guidance_scale,
                            num_inference_steps=self.steps, sampler=self.sampler, seed=seed, batch_size=self.batch_size,
                            progress=True)
        finally:
            if self.prior_start is not None:
                self.pipe.prior_start = own
        return out.images

    def settings(self) -> dict:
        """What, beside the model's files, decides its reconstructions (the row cache's key)."""
        extra = {} if self.prior_start is None else {"prior_start": self.prior_start}
        return {"class": "generative", "guidance_scale": self.guidance_scale, "steps": self.steps,
                "sampler": self.sampler, **extra}


class RefinedMethod:
    """A model plus `queries` black-box queries per identity at inversion time
    (id3pm.refine); the judge is the conditioning encoder, the FR system that the
    attacker holds a template of. Keeps the closest `num_samples`."""

    generative = False  # its samples are selected for identity, not drawn: no diversity row
    identities_independent = True  # each identity's search starts from the same seeds: a row can be made in pieces

    def __init__(self, name: str, pipe, judge, queries: int, search: str, guidance_scale: float = 2.0, steps: int = 25,
                 sampler: str = "dpmpp_2m", batch_size: int = 32):
        self.name, self.pipe, self.judge, self.queries, self.search = name, pipe, judge, queries, search
        self.guidance_scale, self.steps, self.sampler, self.batch_size = guidance_scale, steps, sampler, batch_size
        self.spent: list[int] = []

    def reconstruct(self, vectors: np.ndarray, num_samples: int, seed: int, progress: bool = True) -> np.ndarray:
        from id3pm.refine import query_refine

        out = query_refine(self.pipe, vectors, self.queries, keep=num_samples, search=self.search, encoder=self.judge,
                           guidance_scale=self.guidance_scale, num_inference_steps=self.steps, sampler=self.sampler,
                           seed=seed, batch_size=self.batch_size, progress=progress)
        self.spent += out.queries.tolist()
        return out.images

    def settings(self) -> dict:
        return {"class": "refined", "queries": self.queries, "search": self.search, "judge": self.judge.spec(),
                "guidance_scale": self.guidance_scale, "steps": self.steps, "sampler": self.sampler}


class NearestNeighbour:
    generative = False

    def __init__(self, train_vectors: np.ndarray, train_images: np.ndarray, distance: str, name: str = "nearest neighbour"):
        self.name, self.vectors, self.images, self.distance = name, train_vectors, train_images, distance

    def reconstruct(self, vectors: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        out = []
        for v in vectors:
            d = identity_distance(self.vectors, v[None], self.distance)
            out.append(self.images[np.argsort(d)[:num_samples]])
        return np.stack(out)


class RandomImages:
    generative = False

    def __init__(self, train_images: np.ndarray, name: str = "random training image"):
        self.name, self.images = name, train_images

    def reconstruct(self, vectors: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return self.images[rng.integers(0, len(self.images), size=(len(vectors), num_samples))]


def at_size(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-2] == size:
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    return np.stack([resize(im, size) for im in flat]).reshape(*images.shape[:-3], size, size, 3)
