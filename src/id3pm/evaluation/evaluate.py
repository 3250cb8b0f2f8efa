"""`id3pm evaluate`: how close are reconstructions to the person, judged by the
conditioning encoder AND an independent one, and how diverse are they (ID3PM's
Tables 2 and 3, Figure 4), with the baselines every claim must beat.

Originals are canonical crops of a prepared data set's held-out split (with the
vectors the black box gave for them) or face photos in verification pairs. Every
image, original or reconstruction, is judged at the model's resolution in the
canonical crop, so no method is favoured by a sharper input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from id3pm.data import PreparedDataset
from id3pm.encoders import identity_distance, make_encoder, parse_encoder_spec
from id3pm.encoders.protected import parse_protection
from id3pm.evaluation.baselines import GenerativeMethod, NearestNeighbour, RandomImages, RefinedMethod, at_size
from id3pm.evaluation.metrics import (frechet_distance, kernel_inception_distance, mean_pairwise, ms_ssim, precision_recall,
                                      structural_ms_ssim)
from id3pm.evaluation.plots import attack_plot, identity_density_plot, reconstruction_sheet, sar_bars
from id3pm.evaluation.report import render_attack_report, render_report
from id3pm.evaluation.rowcache import RowCache, folder_digest
from id3pm.evaluation.sar import impostor_distances, sar_table
from id3pm.evaluation.scoring import encode_all, summary
from id3pm.evaluation.paired import paired_accuracy
from id3pm.evaluation.verification import fold_summary, kfold_accuracy, kfold_decisions, read_pairs, roc_auc, spread_over_folds
from id3pm.files import atomic_write_bytes, atomic_write_json
from id3pm.images import ImageError, load_image, resize

REAL_PEOPLE_ROW = "real photos of one person"
AGE_BANDS = [(0, 19, "0-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+")]
UTK_GROUPS = {"gender": ["male", "female"], "race": ["White", "Black", "Asian", "Indian", "Others"]}


@dataclass
class EvalConfig:
    out: str  # output folder: report.md, metrics.json, plots, sheet.png
    models: list[str] = field(default_factory=list)  # model folders, optionally "name=path"
    data: str | None = None  # prepared data set: originals come from its `split`
    split: str = "holdout"
    limit: int = 100  # originals to evaluate (a fixed random sample of the split)
    threshold_ids: int = 2000  # images of the split whose impostor pairs set the SAR thresholds (>= limit)
    train_data: str | None = None  # prepared set for the retrieval / random baselines (default: data's train split)
    baselines: list[str] = field(default_factory=lambda: ["nn", "random", "real"])  # + "regression=PATH"
    independent: str | None = "faceres"  # independent encoder spec ("" or None: skip)
    # more FR models that judge every row beside those two, each named by its encoder in the
    # tables: a margin-loss model judges what the field attacks. One that is the conditioning
    # or independent encoder adds nothing and is dropped; one whose model file is missing is a note
    judges: list[str] = field(default_factory=lambda: ["mobilefacenet"])
    encoder: str = "dlib"  # conditioning encoder when neither --data nor --model says which
    pairs: str | None = None  # verification pairs (LFW pairs.txt or path_a,path_b,same,fold CSV)
    pairs_root: str | None = None  # folder the pair paths are relative to
    pairs_limit: int | None = None  # at most N pairs, taken in turn from each fold
    guidance: list[float] = field(default_factory=lambda: [2.0])  # one row per scale for each model
    prior_starts: list[float] = field(default_factory=list)  # extra rows of a model with a prior: sampling from g(y) noised to these fractions of the schedule
    steps: int = 25
    sampler: str = "dpmpp_2m"
    diversity_ids: int = 10  # identities for the diversity table (paper: 50)
    diversity_samples: int = 10  # samples per identity (paper: 100)
    fid: bool = False  # FID / precision / recall (needs an Inception TorchScript)
    inception: str | None = None
    lpips_backbone: str | None = None  # AlexNet weights for LPIPS (optional)
    lpips_heads: str | None = None  # LPIPS linear heads (optional)
    seed: int = 0
    device: str | None = None
    batch_size: int = 32
    queries: list[int] = field(default_factory=list)  # rows refined with N black-box queries per identity
    searches: list[str] = field(default_factory=lambda: ["best_of_n", "renoise"])  # how the queries are spent
    report: str = ""  # "attack": also attack.md / attack.png (SAR against queries)
    protections: list[str] = field(default_factory=list)  # template transforms to attack, e.g. "biohash:key=7"
    adapter: str | None = None  # adapter folder (`id3pm adapt`): the models invert --data's encoder's templates through it
    # verification: every row again after each upsampler ("lanczos" or a folder, optionally "name=path"; each
    # image given the template it was made from), beside the real crop at its size (#26's bar)
    upscale: list[str] = field(default_factory=list)


class SpreadTools:
    """What measures how much the images of one identity differ (each tool optional but
    the landmark estimator and the identity encoder)."""

    def __init__(self, attributes, emotion, lpips, encoder):
        self.attributes, self.emotion, self.lpips, self.encoder = attributes, emotion, lpips, encoder

    def spread(self, imgs: np.ndarray) -> dict[str, float]:
        """Mean pairwise differences among the images of one identity."""
        from id3pm.alignment import recrop

        attrs = np.stack([self.attributes.estimate_aligned(im) for im in imgs])
        out = {"pose_deg": mean_pairwise(attrs[:, :3]), "expression": mean_pairwise(attrs[:, 3:])}
        if self.emotion is not None:  # total variation between emotion distributions
            crop = self.emotion.crop
            probs = self.emotion.predict([recrop(im, crop.padding, crop.size) for im in imgs])
            out["emotion"] = mean_pairwise(probs, lambda a, b: 0.5 * float(np.abs(a - b).sum()))
        i, j = np.triu_indices(len(imgs), 1)
        out["one_minus_ms_ssim"] = float(1 - ms_ssim(imgs[i], imgs[j]).mean())
        # the same without colour, exposure and contrast: a colour cast is not a different picture
        out["one_minus_ms_ssim_grey"] = float(1 - structural_ms_ssim(imgs[i], imgs[j]).mean())
        if self.lpips is not None:
            out["lpips"] = float(self.lpips(imgs[i], imgs[j]).mean())
        enc = self.encoder
        v = enc.encode(list(imgs), aligned=True).vectors
        out["identity_spread"] = mean_pairwise(v, lambda a, b: float(identity_distance(a, b, enc.distance)))
        return out


def spread_summary(per_identity: list[dict[str, float]]) -> dict:
    keys = per_identity[0].keys() if per_identity else []
    return {k: summary([p[k] for p in per_identity]) for k in keys}


class Evaluation:
    def __init__(self, cfg: EvalConfig):
        from id3pm.pipeline import ID3PMPipeline

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics: dict = {"config": cfg.__dict__, "timing": {}}
        self.pipes, self.protected_pipes = [], []  # models on plain vectors; on protected ones (aware attackers)
        for spec in cfg.models:
            name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
            pipe = ID3PMPipeline.from_pretrained(path, device=cfg.device, adapter=cfg.adapter, upscale=None)
            protected = pipe.info["encoder"].get("name") == "protected"
            (self.protected_pipes if protected else self.pipes).append((name or Path(path).name, pipe))
        self.data = PreparedDataset(cfg.data) if cfg.data else None
        if self.data is not None:
            enc_spec = self.data.manifest["encoder"]
        elif self.pipes:  # the FR model whose templates the first model takes (its adapter's, if any)
            enc_spec = self.pipes[0][1].template_spec()
        elif cfg.pairs:  # real images only: the verification protocol of the encoders themselves
            enc_spec = parse_encoder_spec(cfg.encoder)
        else:
            raise ValueError("evaluate needs --data, --model or --pairs")
        for name, pipe in self.pipes:
            if pipe.template_encoder != enc_spec.get("name") or (self.data is not None and self.data.id_dim != pipe.id_dim):
                via = " (through its adapter)" if pipe.adapter is not None else ""
                raise ValueError(f"model {name} takes {pipe.id_dim}-d {pipe.template_encoder} templates{via}, the data "
                                 f"holds {self.data.id_dim if self.data is not None else '?'}-d {enc_spec.get('name')} vectors")
        for name, pipe in self.protected_pipes:
            inner = pipe.info["encoder"].get("encoder", {})
            if (inner.get("name") if isinstance(inner, dict) else str(inner).partition(":")[0]) != enc_spec.get("name"):
                raise ValueError(f"model {name} was trained on templates of {inner}, the data's encoder is {enc_spec}")
        self.cond = make_encoder(dict(enc_spec))
        self.size = self.pipes[0][1].image_size if self.pipes else (self.data.manifest["sizes"][0] if self.data else 64)
        self.ind = make_encoder(parse_encoder_spec(cfg.independent)) if cfg.independent else None
        self.judges = ([("independent", self.ind)] if self.ind else []) + self._extra_judges()  # all but conditioning
        self.encoders = [("conditioning", self.cond)] + self.judges
        self.methods = self._methods()
        self.upscalers = [self._upscaler(spec, enc_spec) for spec in cfg.upscale]
        self.row_cache, self.model_digests = RowCache(self.out / "rows"), {}

    def _upscaler(self, spec: str, enc_spec: dict):
        """(name, upscaler) for --upscale; one conditioned on y must take this encoder's templates."""
        from id3pm.superres import make_upscaler

        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        up = make_upscaler(path, self.cfg.device)
        if not up.takes_templates_of(enc_spec.get("name")):
            raise ValueError(f"upsampler {spec} is conditioned on {up.info['encoder'].get('name')} vectors, "
                             f"the templates are {enc_spec.get('name')}'s")
        return name or Path(path).name, up

    def note(self, text: str) -> None:
        tqdm.write(f"evaluate: {text}")
        self.metrics.setdefault("notes", []).append(text)

    def _extra_judges(self) -> list:
        """(encoder name, Encoder) of each of cfg.judges not already judging."""
        out, taken = [], {self.cond.name, self.ind.name if self.ind else None}
        for text in self.cfg.judges:
            spec = parse_encoder_spec(text)
            if spec["name"] in taken:
                continue
            try:
                out.append((spec["name"], make_encoder(spec)))
            except FileNotFoundError as e:  # e.g. no `make models` yet: the other judges still judge
                self.note(f"judge {spec['name']} skipped: {e}")
                continue
            taken.add(spec["name"])
        return out

    # -- methods -----------------------------------------------------------------------
    def _train_pool(self):
        source = PreparedDataset(self.cfg.train_data) if self.cfg.train_data else self.data
        if source is None:
            return None, None
        idx = source.split_indices("train")
        return source.vectors(idx), source.images(self.size if self.size in source.manifest["sizes"] else source.manifest["sizes"][0], idx)

    def _methods(self) -> list:
        from id3pm.pipeline import ID3PMPipeline

        methods = []
        for name, pipe in self.pipes:
            if pipe.info.get("task") == "regression":
                methods.append(GenerativeMethod(f"{name} (regression)", pipe))
                continue
            for g in self.cfg.guidance:
                methods.append(GenerativeMethod(f"{name} s={g:g}", pipe, g, self.cfg.steps, self.cfg.sampler, self.cfg.batch_size))
            g = self.cfg.guidance[0]
            for start in self.cfg.prior_starts if pipe.prior is not None else []:
                methods.append(GenerativeMethod(f"{name} s={g:g} start={start:g}", pipe, g, self.cfg.steps,
                                                self.cfg.sampler, self.cfg.batch_size, prior_start=start))
            for search in self.cfg.searches if self.cfg.queries else []:
                for n in self.cfg.queries:
                    methods.append(RefinedMethod(f"{name} s={g:g} {search} N={n}", pipe, self.cond, n, search, g,
                                                 self.cfg.steps, self.cfg.sampler, self.cfg.batch_size))
        needs_pool = any(b in ("nn", "random") for b in self.cfg.baselines)
        vectors, images = self._train_pool() if needs_pool else (None, None)
        for b in self.cfg.baselines:
            if b == "nn" and vectors is not None:
                methods.append(NearestNeighbour(vectors, at_size(images, self.size), self.cond.distance))
            elif b == "random" and images is not None:
                methods.append(RandomImages(at_size(images, self.size)))
            elif b.startswith("regression="):
                pipe = ID3PMPipeline.from_pretrained(b.split("=", 1)[1], device=self.cfg.device, upscale=None)
                methods.append(GenerativeMethod("regression decoder", pipe))
        return methods

    # -- sections ----------------------------------------------------------------------
    def originals(self):
        idx = self.data.sample_indices(self.cfg.split, self.cfg.limit)  # a random sample, not the first N
        if not len(idx):
            raise ValueError(f"{self.data.path}: no images in split {self.cfg.split!r}")
        sizes = self.data.manifest["sizes"]
        crops = at_size(self.data.images(self.size if self.size in sizes else max(sizes), idx), self.size)
        return idx, crops, self.data.vectors(idx)

    def identity_section(self) -> dict:
        t0 = time.time()
        idx, crops, vectors = self.originals()
        judged = {name: encode_all(enc, crops, True, f"{name}: originals") for name, enc in self.judges}
        self.ind_orig = judged.get("independent")
        results, self.recons = {}, {}
        rows = {"real (original crop)": crops}
        cost = {}
        for m in self.methods:
            names = [str(k) for k in np.array(self.data.keys)[idx]]
            rows[m.name], spent, seconds = self.reconstruct_row(m, names, vectors)
            cost[m.name] = {"queries_per_identity": float(np.mean(spent)) if spent else 0.0,
                            "seconds_per_identity": seconds / len(idx)}
        self.metrics["cost"] = cost
        for name, images in rows.items():
            self.recons[name] = images
            entry = {"conditioning": identity_distance(encode_all(self.cond, images, True, f"{name}: conditioning"),
                                                       vectors, self.cond.distance)}
            for judge, enc in self.judges:
                entry[judge] = identity_distance(encode_all(enc, images, True, f"{name}: {judge}"), judged[judge],
                                                 enc.distance)
            results[name] = entry
        self.identity_raw = results
        self.original_index = idx
        self.population = self.threshold_population(idx, vectors, judged)  # also the protected systems' thresholds
        self.metrics["sar_type1"] = self.sar_type1(*self.population)
        self.metrics["timing"]["identity_seconds_per_100"] = (time.time() - t0) / len(idx) * 100
        return {name: {enc: summary(v) for enc, v in entry.items()} for name, entry in results.items()}

    def reconstruct_row(self, m, originals: list[str], vectors: np.ndarray) -> tuple[np.ndarray, list[int], float]:
        """One reconstruction per original: (images, queries spent per identity, seconds).
        A model's row is kept in OUT/rows (id3pm.evaluation.rowcache), so a rerun into the
        same folder samples only the rows it has not finished."""
        key = self.row_key(m, originals)
        if key is not None and (found := self.row_cache.get(key)) is not None:
            tqdm.write(f"{m.name}: reusing the finished row in {self.row_cache.folder}")
            return found
        if key is not None and getattr(m, "identities_independent", False):
            images, spent, seconds = self.row_by_identity(m, key, vectors)
        else:
            start, before = time.time(), len(getattr(m, "spent", []))
            images = m.reconstruct(vectors, 1, self.cfg.seed)[:, 0]
            spent, seconds = getattr(m, "spent", [])[before:], time.time() - start
        if key is not None:
            self.row_cache.put(key, images, spent, seconds)
        return images, spent, seconds

    def row_key(self, m, originals: list[str]) -> dict | None:
        """What made a model's row (None for baselines, which are cheap to make again)."""
        if not (hasattr(m, "settings") and getattr(m.pipe, "model_path", None)):
            return None
        path = m.pipe.model_path
        if path not in self.model_digests:
            self.model_digests[path] = folder_digest(path)
        adapter = {"adapter": folder_digest(self.cfg.adapter)} if getattr(m.pipe, "adapter", None) is not None else {}
        return {**m.settings(), "model": self.model_digests[path], **adapter, "seed": self.cfg.seed,
                "precision": m.pipe.precision, "device": m.pipe.device.type,  # bf16 / GPU samples differ
                "originals": list(originals)}

    def row_by_identity(self, m, key: dict, vectors: np.ndarray) -> tuple[np.ndarray, list[int], float]:
        """A query-refined row (up to hours), one identity at a time, each kept as it ends:
        a crash or a time limit loses one identity, not the row. Each identity's search
        starts from the same seeds whatever the others are, so the pieces are the row."""
        kept, spent, seconds = self.row_cache.get_partial(key) or ([], [], 0.0)
        images = list(kept)
        if images:
            tqdm.write(f"{m.name}: resuming after the {len(images)} identities kept in {self.row_cache.folder}")
        for i in tqdm(range(len(images), len(vectors)), desc=f"{m.name}: identities", initial=len(images),
                      total=len(vectors)):
            start, before = time.time(), len(m.spent)
            images.append(m.reconstruct(vectors[i : i + 1], 1, self.cfg.seed, progress=False)[0, 0])
            spent, seconds = spent + m.spent[before:], seconds + time.time() - start
            self.row_cache.put_partial(key, np.stack(images), spent, seconds)
        return np.stack(images), spent, seconds

    def threshold_population(self, idx: np.ndarray, vectors: np.ndarray, judged: dict[str, np.ndarray]):
        """Vectors of up to threshold_ids real images of the split, (conditioning, {judge:
        vectors}), under every encoder (judged: the originals' vectors under the judges): the
        evaluated originals plus the next images of the same random sample. A threshold set
        on the evaluated originals alone would move with --limit (FMR 1% of 40 images is
        the 8th closest of 780 pairs)."""
        population = self.data.sample_indices(self.cfg.split, max(self.cfg.threshold_ids, len(idx)))
        self.population_identities = self.data.identities(population)  # None: every pair an impostor pair
        assert np.array_equal(population[: len(idx)], idx), "the originals must lead the threshold sample"
        extra = population[len(idx):]
        if not len(extra):
            return vectors, dict(judged)
        cond = np.concatenate([vectors, self.data.vectors(extra)])
        if not self.judges:
            return cond, {}
        sizes = self.data.manifest["sizes"]
        crops = at_size(self.data.images(self.size if self.size in sizes else max(sizes), extra), self.size)
        return cond, {name: np.concatenate([judged[name], encode_all(enc, crops, True, f"{name}: threshold images")])
                      for name, enc in self.judges}

    def sar_type1(self, vectors: np.ndarray, judged: dict[str, np.ndarray]) -> dict:
        """Type-I SAR: each reconstruction against the image whose vector it inverts, at the
        thresholds where real impostor pairs (images of the split of different people, as
        far as its identity labels tell) reach FMR 1% and 0.1%."""
        originals = {"conditioning": (vectors, self.cond), **{name: (judged[name], e) for name, e in self.judges}}
        impostors = {enc: impostor_distances(v, e.distance, identities=self.population_identities)
                     for enc, (v, e) in originals.items()}
        self.independent_impostors = impostors.get("independent")  # the protected rows' too
        if min(len(d) for d in impostors.values()) == 0:
            self.metrics.setdefault("notes", []).append("type-I SAR skipped: fewer than 2 readable originals, "
                                                        "so no impostor pairs to set a threshold on")
            return {}
        # the real crops' row is the ceiling: under the conditioning encoder it measures what the
        # crop's resolution alone loses (its independent vectors ARE the originals': 100%)
        return {name: {enc: sar_table(d, impostors[enc]) for enc, d in entry.items()}
                for name, entry in self.identity_raw.items()}

    def breakdown_section(self) -> dict:
        """Identity distance by metadata group (UTKFace age band, gender, race)."""
        cols = [c[5:] for c in self.data.table.column_names if c.startswith("meta_")]
        out = {}
        for col in cols:
            values = self.data.metadata(col, self.original_index)
            if col == "age":
                labels = [next((lab for lo, hi, lab in AGE_BANDS if v is not None and lo <= v <= hi), None) for v in values]
            elif col in UTK_GROUPS and self.data.manifest.get("metadata") == "utkface":
                labels = [None if v is None else UTK_GROUPS[col][int(v)] for v in values]
            else:
                labels = [None if v is None else str(v) for v in values]
            groups = sorted({g for g in labels if g is not None})
            if not 1 < len(groups) <= 12:
                continue
            labels = np.array(labels, dtype=object)
            out[col] = {
                g: {name: {enc: summary(d[labels == g]) for enc, d in entry.items()}
                    for name, entry in self.identity_raw.items()}
                for g in groups
            }
        return out

    def verification_section(self) -> dict:
        t0 = time.time()
        pairs = spread_over_folds(read_pairs(self.cfg.pairs), self.cfg.pairs_limit)
        root = Path(self.cfg.pairs_root or Path(self.cfg.pairs).parent)
        paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
        photos, failed = [], []
        for path in tqdm(paths, desc="verification: loading", leave=False):
            try:
                photos.append(load_image(root / path, name=path))
            except ImageError as e:
                failed.append(str(e))
                photos.append(np.zeros((8, 8, 3), np.uint8))  # encodes as "no face": a NaN row
        where = {p: i for i, p in enumerate(paths)}
        emb = {name: encode_all(enc, photos, False, f"verification: {name}", keys=paths) for name, enc in self.encoders}
        same = np.array([p.same for p in pairs])
        folds = np.array([p.fold for p in pairs])
        if same.all() or not same.any():
            raise ValueError(f"{self.cfg.pairs}: the {len(pairs)} pairs used are all "
                             f"{'same' if same.all() else 'different'}-person pairs; a threshold needs both")
        firsts = sorted({where[p.a] for p in pairs if p.same})
        results, real_distances = {}, {}
        rows = {"real images": None}
        cond_vectors = emb["conditioning"][firsts]
        ok = np.isfinite(cond_vectors).all(axis=1)
        rows[f"real crop at {self.size} px"] = (self.canonical_crops([photos[i] for i in firsts], ok), ok)  # the ceiling
        originals = [f"pair photo {paths[i]}" for i, good in zip(firsts, ok) if good]  # its rows are kept (rows/)
        for m in self.methods:
            recon = np.zeros((len(firsts), self.size, self.size, 3), np.uint8)
            recon[ok] = self.reconstruct_row(m, originals, cond_vectors[ok])[0]
            rows[m.name] = (recon, ok)
        upscaled, sources = self.upscaled_rows(rows, [photos[i] for i in firsts], cond_vectors, ok)
        rows.update(upscaled)
        decisions = {}  # "ROW | ENCODER": each pair decided right at the real pairs' thresholds
        for row, value in rows.items():
            results[row] = {}
            for enc_name, enc in self.encoders:
                e = emb[enc_name]
                if value is None:
                    first = e
                else:
                    recon, ok = value
                    first = e.copy()
                    rec = np.full((len(firsts), e.shape[1]), np.nan, np.float32)
                    rec[ok] = encode_all(enc, recon[ok], True, f"{row}: {enc_name}")
                    first[firsts] = rec  # the first image of every positive pair -> its reconstruction
                d = np.array([identity_distance(first[where[p.a]] if p.same else e[where[p.a]], e[where[p.b]], enc.distance)
                              for p in pairs])
                results[row][enc_name] = {**kfold_accuracy(d, same, folds), "auc": roc_auc(d, same)}
                if value is not None:  # type-II SAR: the reconstruction of a against b, the same person
                    real = real_distances[enc_name]
                    correct, thresholds = kfold_decisions(d, same, folds, threshold_distances=real)
                    results[row][enc_name]["real_thresholds"] = fold_summary(correct, thresholds, folds, d)
                    decisions[f"{row} | {enc_name}"] = correct
                    results[row][enc_name]["sar_type2"] = sar_table(d[same], real[~same])
                else:
                    real_distances[enc_name] = d
        np.savez_compressed(self.out / "verification.npz", pair=np.array([f"{p.a}|{p.b}" for p in pairs]),
                            same=same, fold=folds, **decisions)
        self.metrics["timing"]["verification_seconds"] = time.time() - t0
        return {"pairs": len(pairs), "images": len(paths), "unreadable": failed, "rows": results,
                "upscaled_paired": self.paired_with_sources(decisions, sources)}

    def paired_with_sources(self, decisions: dict, sources: dict) -> dict:
        """Each upscaled row against the row it enlarged, pair by pair at the real pairs'
        thresholds (#26's bar: the upsampler keeps the identity of what it enlarges)."""
        return {row: {enc: paired_accuracy(decisions[f"{source} | {enc}"], decisions[f"{row} | {enc}"])
                      for enc, _ in self.encoders}
                for row, source in sources.items()}

    def upscaled_rows(self, rows: dict, photos: list[np.ndarray], vectors: np.ndarray, ok: np.ndarray):
        """--upscale: each method's row enlarged by each upsampler (image j gets template j and
        seed j), and the real crop at the upsampler's size, the ceiling of that row; and
        {enlarged row: the row it enlarged}."""
        out, sources = {}, {}
        for name, up in self.upscalers:
            out.setdefault(f"real {up.size} px crop", (self.canonical_crops(photos, ok, up.size), ok))
            for m in self.methods:
                big = np.zeros((len(ok), up.size, up.size, 3), np.uint8)
                big[ok] = up(rows[m.name][0][ok], seeds=np.flatnonzero(ok), id_vectors=vectors[ok])
                enlarged = f"{m.name} -> {up.size} px {name}"
                out[enlarged], sources[enlarged] = (big, ok), m.name
        return out, sources

    def canonical_crops(self, photos: list[np.ndarray], ok: np.ndarray, size: int | None = None) -> np.ndarray:
        """Each photo's canonical crop at the model's size (or `size`): a perfect reconstruction
        at that resolution (zeros where the conditioning encoder found no face)."""
        from id3pm.alignment import CANONICAL_SIZE

        size = size or self.size
        crops = np.zeros((len(photos), size, size, 3), np.uint8)
        for j in np.flatnonzero(ok):
            crops[j] = resize(self.cond.aligner.align(photos[j], CANONICAL_SIZE).crop, size)
        return crops

    def diversity_section(self) -> dict:
        from id3pm.attributes import AttributeEstimator

        t0 = time.time()
        _, _, vectors = self.originals()
        vectors = vectors[: self.cfg.diversity_ids]
        est = AttributeEstimator(["pose", "expression"], aligner=self.cond.aligner)
        emotion = None
        try:  # human's emotion model, when `make models` fetched it
            from id3pm.encoders.faceres import EmotionModel

            emotion = EmotionModel()
        except FileNotFoundError:
            pass
        lpips = None
        if self.cfg.lpips_backbone and self.cfg.lpips_heads:
            from id3pm.evaluation.features import LPIPS

            lpips = LPIPS(self.cfg.lpips_backbone, self.cfg.lpips_heads)
        tools = SpreadTools(est, emotion, lpips, self.ind or self.cond)
        out = {}
        for m in [m for m in self.methods if m.generative or isinstance(m, NearestNeighbour)]:
            samples = m.reconstruct(vectors, self.cfg.diversity_samples, self.cfg.seed + 1000)
            out[m.name] = spread_summary([tools.spread(imgs) for imgs in tqdm(samples, desc=f"diversity: {m.name}",
                                                                                leave=False)])
        people = self.photos_of_people(self.cfg.diversity_ids, self.cfg.diversity_samples)
        if people:  # the bar: how much real photos of one person differ (CelebA: pose, light, age, background)
            out[REAL_PEOPLE_ROW] = spread_summary([tools.spread(imgs) for imgs in people])
        self.metrics["timing"]["diversity_seconds"] = time.time() - t0
        return out

    def photos_of_people(self, n_people: int, most: int) -> list[np.ndarray]:
        """Real crops of up to n_people people of the split with 3 or more photos each (at
        most `most` photos of each), for the diversity of real photos of one person."""
        labels = self.data.identities(self.data.split_indices(self.cfg.split))
        if labels is None:
            return []
        idx = self.data.split_indices(self.cfg.split)
        by_person: dict = {}
        for i, person in zip(idx, labels):
            if person is not None:
                by_person.setdefault(person, []).append(i)
        several = sorted((p for p, v in by_person.items() if len(v) >= 3), key=str)
        pick = np.random.default_rng(self.cfg.seed).permutation(len(several))[:n_people]
        sizes = self.data.manifest["sizes"]
        size = self.size if self.size in sizes else max(sizes)
        return [at_size(self.data.images(size, by_person[several[k]][:most]), self.size) for k in sorted(pick)]

    def protection_section(self) -> dict:
        """Each protection scheme (--protect, and those of models trained on protected
        vectors) attacked by unaware and aware attackers (id3pm.evaluation.protection)."""
        from id3pm.evaluation.protection import ProtectedSystem, attack_protected, aware_retrieval

        systems = {}
        for spec in [parse_protection(t) for t in self.cfg.protections] + [p.info["encoder"] for _, p in self.protected_pipes]:
            system = ProtectedSystem(self.cond, spec)
            systems.setdefault(system.label, system)
        _, _, vectors = self.originals()
        plain = [m for m in self.methods if isinstance(m, (GenerativeMethod, NearestNeighbour))]
        g = self.cfg.guidance[0]
        plain = [m for m in plain if not getattr(m, "generative", False) or m.guidance_scale == g]
        pool = self._train_pool() if plain else (None, None)
        retrieval = any(isinstance(m, NearestNeighbour) for m in plain)
        rows = {}
        for system in systems.values():
            attackers = [("unaware", m) for m in plain]
            attackers += [("aware", GenerativeMethod(f"{name} s={g:g}", pipe, g, self.cfg.steps, self.cfg.sampler,
                                                     self.cfg.batch_size))
                          for name, pipe in self.protected_pipes if system.matches(pipe.info["encoder"])]
            if pool[0] is not None and retrieval:
                attackers.append(("aware", aware_retrieval(system, pool[0], at_size(pool[1], self.size))))
            attackers += self._preimage_attackers(system, pool[0], [m for m in plain if isinstance(m, GenerativeMethod)])
            found, notes = attack_protected(system, attackers, vectors, self.ind, self.ind_orig, self.cfg.seed,
                                            population=(self.population[0], self.population[1].get("independent")),
                                            independent_impostors=self.independent_impostors)
            rows.update(found)
            self.metrics.setdefault("notes", []).extend(notes)
        return rows

    def _preimage_attackers(self, system, pool_vectors, methods) -> list:
        """("aware", Preimage) for each plain model; a pool too small to fit one is a note."""
        from id3pm.evaluation.protection import Preimage

        out = []
        for method in methods:
            try:
                out.append(("aware", Preimage(system, pool_vectors, method)))
            except ValueError as e:
                self.metrics.setdefault("notes", []).append(f"{system.label} · aware: {e}")
        return out

    def fid_section(self) -> dict:
        from id3pm.evaluation.features import InceptionFeatures

        net = InceptionFeatures(self.cfg.inception, device="cpu")
        real = net(self.recons["real (original crop)"])
        out = {}
        for name, images in self.recons.items():
            if name.startswith("real"):
                continue
            fake = net(images)
            p, r = precision_recall(real, fake, k=3)
            # KID over subsets of half the images: its spread over subsets is its uncertainty
            kid, kid_std = kernel_inception_distance(real, fake, subset_size=max(2, min(len(real), len(fake)) // 2))
            out[name] = {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, "precision": p,
                         "recall": r, "n": len(images)}
        return out

    # -- run ---------------------------------------------------------------------------------
    def save_distances(self, path: Path) -> None:
        """Per-original identity distances ("METHOD | ENCODER" arrays, aligned with `key`), so
        that rates can be recomputed at other thresholds without sampling again."""
        keys = np.array(self.data.keys)[self.original_index]
        arrays = {f"{name} | {enc}": np.asarray(d, np.float32) for name, entry in self.identity_raw.items()
                  for enc, d in entry.items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, key=keys, **arrays)
        tmp.replace(path)

    def run(self) -> dict:
        start = time.time()
        if self.data is not None:
            self.metrics["identity"] = self.identity_section()
            self.metrics["breakdown"] = self.breakdown_section()
            if self.cfg.diversity_ids:
                self.metrics["diversity"] = self.diversity_section()
            if self.cfg.fid:
                self.metrics["fid"] = self.fid_section()
            if self.cfg.protections or self.protected_pipes:
                self.metrics["protection"] = self.protection_section()
            self.save_distances(self.out / "distances.npz")
            identity_density_plot(self.identity_raw, self.encoders, self.out / "identity_distance.png")
            if self.metrics.get("sar_type1"):
                sar_bars(self.metrics["sar_type1"], self.encoders, self.out / "sar.png")
            reconstruction_sheet(self.recons, self.out / "sheet.png")
        if self.cfg.pairs:
            self.metrics["verification"] = self.verification_section()
        self.metrics["timing"]["total_seconds"] = time.time() - start
        atomic_write_json(self.out / "metrics.json", self.metrics)
        atomic_write_bytes(self.out / "report.md", render_report(self.metrics, self.encoders).encode())
        if self.cfg.report == "attack" and self.metrics.get("sar_type1"):
            atomic_write_bytes(self.out / "attack.md", render_attack_report(self.metrics).encode())
            attack_plot(self.metrics, self.out / "attack.png")
        return self.metrics
