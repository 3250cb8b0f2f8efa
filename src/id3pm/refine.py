"""Query-refined inversion: the diffusion model as the prior, the black box as the judge.

ID3PM queries the FR model only to build its training pairs and never at inversion
time. An attacker who holds a template can often also query the FR system (an API, the
deployed model). With a budget of N queries per identity:

- `best_of_n`: draw N samples, keep the `keep` closest to the target under the black box;
- `renoise`: an iterative search (SDEdit-style). A quarter of the budget draws fresh
  samples; every further round re-noises the best candidates part of the way
  (`strength`) and denoises them again with new noise, keeping whatever comes closer.
  Only black-box distances are used, never gradients.

Every encoded image is one query, whether or not the encoder found a face in it. The
result records the queries spent per identity and, per identity, the best distance
after each query (the curve that the attack report plots).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from id3pm.encoders import Encoder, check_vectors, identity_distance
from id3pm.sampling import DEFAULT_SAMPLER

SEARCHES = ("best_of_n", "renoise")


@dataclass
class RefineResult:
    images: np.ndarray  # (N, keep, S, S, 3) uint8, closest first
    distances: np.ndarray  # (N, keep) black-box distance to the target (inf where no face was found)
    queries: np.ndarray  # (N,) queries spent per identity
    curves: list[list[float]]  # per identity: the best distance after each query
    seconds: np.ndarray  # (N,) wall time per identity
    lineages: list[list[list[int]]] = field(default_factory=list)  # per kept image: its seeds, fresh sample first
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        clean = lambda a: [None if not np.isfinite(v) else round(float(v), 5) for v in a]
        return {**self.params, "queries": self.queries.tolist(), "seconds": np.round(self.seconds, 3).tolist(),
                        "distances": [clean(d) for d in self.distances], "curves": [clean(c) for c in self.curves],
                "lineages": self.lineages}


class Judge:
    """The black box as the attacker sees it: distances to one target, counted."""

    def __init__(self, encoder: Encoder, target: np.ndarray, distance: str):
        self.encoder, self.target, self.distance = encoder, target, distance
        self.spent, self.curve, self.best = 0, [], np.inf

    def __call__(self, images: np.ndarray) -> np.ndarray:
        vectors = self.encoder.encode(list(images), aligned=True).vectors
        d = identity_distance(vectors, self.target[None], self.distance)
        d = np.where(np.isfinite(d), d, np.inf)
        for value in d:
            self.spent += 1
            self.best = min(self.best, value)
            self.curve.append(self.best)
        return d


def query_refine(pipe, vectors, queries: int, keep: int = 1, search: str = "best_of_n", encoder: Encoder | None = None,
                 guidance_scale: float = 2.0, num_inference_steps: int = 25, sampler: str | None = None, seed: int = 0,
                 strength: float = 0.5, batch_size: int = 16, progress: bool = False) -> RefineResult:
    """Spend `queries` black-box queries per identity; keep the `keep` best images.
    encoder: the FR system to query (default: the model's conditioning encoder)."""
    from tqdm.auto import tqdm

    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; choose one of {SEARCHES}")
    if not 1 <= keep <= queries:
        raise ValueError(f"keep must be in 1..queries ({queries}), got {keep}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    encoder = encoder or pipe.encoder
    if not encoder.encodes_pixels:
        raise ValueError(f"the {encoder.name} encoder cannot judge generated images: queries need an encoder of pixels")
    if not encoder.dim:  # a remote black box learns its length from its first answer: hold it to the targets'
        encoder.dim = int(np.shape(vectors)[-1])
    targets = check_vectors(vectors, encoder.dim, "target vectors")
    render = Renderer(pipe, guidance_scale, num_inference_steps, sampler, batch_size)
    images, dists, spent, curves, seconds, lineages = [], [], [], [], [], []
    for i in tqdm(range(len(targets)), desc="refining", disable=not progress):
        start = time.time()
        judge = Judge(encoder, targets[i], encoder.distance)
        run = best_of_n if search == "best_of_n" else renoise
        pool_images, pool_d, pool_lineage = run(render, judge, targets[i], queries, keep, seed, strength)
        order = np.argsort(pool_d, kind="stable")[:keep]
        images.append(pool_images[order])
        dists.append(pool_d[order])
        lineages.append([pool_lineage[j] for j in order])
        spent.append(judge.spent)
        curves.append(judge.curve)
        seconds.append(time.time() - start)
    params = {"search": search, "queries_per_identity": queries, "keep": keep, "guidance_scale": guidance_scale,
              "num_inference_steps": num_inference_steps, "seed": seed, "encoder": encoder.spec()}
    if search == "renoise":
        params["strength"] = strength
    return RefineResult(np.stack(images), np.stack(dists), np.array(spent), curves, np.array(seconds), lineages, params)


class Renderer:
    """The pipeline's sampler for one target vector, in batches."""

    def __init__(self, pipe, guidance_scale, steps, sampler, batch_size):
        self.pipe, self.guidance, self.steps, self.batch_size = pipe, guidance_scale, steps, batch_size
        self.sampler = sampler or DEFAULT_SAMPLER

    def __call__(self, target: np.ndarray, seeds: list[int], start_images=None, strength: float = 1.0) -> np.ndarray:
        out = []
        for lo in range(0, len(seeds), self.batch_size):
            chunk = seeds[lo : lo + self.batch_size]
            start = None if start_images is None else start_images[lo : lo + self.batch_size]
            out.append(self.pipe.render(np.repeat(target[None], len(chunk), axis=0), chunk, self.guidance, self.steps,
                                        self.sampler, start_images=start, strength=strength))
        return np.concatenate(out)


def best_of_n(render: Renderer, judge: Judge, target, queries, keep, seed, strength):
    seeds = list(range(seed, seed + queries))
    images = render(target, seeds)
    return images, judge(images), [[s] for s in seeds]


def renoise(render: Renderer, judge: Judge, target, queries, keep, seed, strength):
    """Fresh samples for a quarter of the budget, then rounds that re-noise the best
    `elite` candidates and denoise them again, each round as wide as the first."""
    first = max(keep, queries // 4)
    images = render(target, list(range(seed, seed + first)))
    dists = judge(images)
    lineage = [[s] for s in range(seed, seed + first)]
    next_seed = seed + first
    while judge.spent < queries:
        width = min(first, queries - judge.spent)
        elite = np.argsort(dists, kind="stable")[: max(1, min(keep, width))]
        parents = np.resize(elite, width)  # the elite, repeated to fill the round
        seeds = list(range(next_seed, next_seed + width))
        children = render(target, seeds, start_images=images[parents], strength=strength)
        next_seed += width
        images = np.concatenate([images, children])
        dists = np.concatenate([dists, judge(children)])
        lineage += [lineage[p] + [s] for p, s in zip(parents, seeds)]
    return images, dists, lineage
