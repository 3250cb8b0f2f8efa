"""Face verification protocol: pairs files and the standard LFW 10-fold accuracy
(threshold chosen on 9 folds, applied to the 10th)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    a: str  # path of the first image, relative to the data root
    b: str
    same: bool
    fold: int


def read_lfw_pairs(path: str | Path, ext: str = ".jpg") -> list[Pair]:
    """LFW `pairs.txt`: first line `folds n`, then per fold n lines `name i j` (same
    person, name/name_000i.jpg) and n lines `name1 i name2 j` (different people)."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    folds, n = int(lines[0][0]), int(lines[0][1])
    if len(lines) - 1 != folds * 2 * n:
        raise ValueError(f"{path}: expected {folds} folds of {2 * n} pairs, found {len(lines) - 1} lines")
    image = lambda name, i: f"{name}/{name}_{int(i):04d}{ext}"  # noqa: E731
    pairs = []
    for k, parts in enumerate(lines[1:]):
        fold = k // (2 * n)
        if len(parts) == 3:
            pairs.append(Pair(image(parts[0], parts[1]), image(parts[0], parts[2]), True, fold))
        elif len(parts) == 4:
            pairs.append(Pair(image(parts[0], parts[1]), image(parts[2], parts[3]), False, fold))
        else:
            raise ValueError(f"{path}: line {k + 2} is neither 'name i j' nor 'name1 i name2 j'")
    return pairs


def read_pair_csv(path: str | Path) -> list[Pair]:
    """CSV with columns path_a, path_b, same (0/1), fold."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"path_a", "path_b", "same", "fold"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: needs columns {sorted(need)}")
    return [Pair(r["path_a"], r["path_b"], r["same"].strip() in ("1", "true", "True"), int(r["fold"])) for r in rows]


def read_pairs(path: str | Path) -> list[Pair]:
    return read_pair_csv(path) if str(path).endswith(".csv") else read_lfw_pairs(path)


def identity_pairs(keys: list[str], identities: list, folds: int = 10, seed: int = 0,
                   max_positives_per_identity: int = 3) -> list[Pair]:
    """Verification pairs of a set with identity labels, the LFW way: the people are dealt
    to `folds` folds (so no person is in two), each fold's positive pairs are pairs of
    photos of one of its people (at most max_positives_per_identity each, so that a person
    with many photos does not outweigh the rest), and as many negative pairs join photos of
    two of its people (fewer folds when there are fewer than 2 * folds people). Seeded:
    the same labels give the same pairs."""
    rng = np.random.default_rng(seed)
    by_person: dict = {}
    for key, person in zip(keys, identities):
        if person is not None:
            by_person.setdefault(person, []).append(key)
    people = sorted(by_person, key=str)
    people = [people[i] for i in rng.permutation(len(people))]
    folds = max(1, min(folds, len(people) // 2))  # a fold needs two people for a negative pair
    pairs: list[Pair] = []
    for fold in range(folds):
        members = people[fold::folds]
        positives = []
        for person in members:
            photos = sorted(by_person[person])
            i, j = np.triu_indices(len(photos), 1)
            pick = rng.permutation(len(i))[:max_positives_per_identity]
            positives += [Pair(photos[i[k]], photos[j[k]], True, fold) for k in sorted(pick)]
        negatives = []
        while len(members) > 1 and len(negatives) < len(positives):
            a, b = rng.choice(len(members), 2, replace=False)
            photos_a, photos_b = sorted(by_person[members[a]]), sorted(by_person[members[b]])
            negatives.append(Pair(photos_a[rng.integers(len(photos_a))], photos_b[rng.integers(len(photos_b))], False, fold))
        pairs += positives + negatives
    return pairs


def write_pair_csv(pairs: list[Pair], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path_a", "path_b", "same", "fold"])
        writer.writerows([p.a, p.b, int(p.same), p.fold] for p in pairs)


def spread_over_folds(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """At most `limit` pairs, taken in turn from each fold, and within a fold in turn from its
    same-person and different-person pairs (each in file order): k-fold accuracy needs at
    least two folds and a threshold needs both kinds, while a pairs file often lists fold by
    fold and, within a fold, all positives first (LFW's and the yardstick's do)."""
    if limit is None or limit >= len(pairs):
        return pairs
    by_fold: dict[int, list[Pair]] = {}
    for pair in pairs:
        by_fold.setdefault(pair.fold, []).append(pair)
    queues = [iter(alternate_same_and_different(fold)) for fold in by_fold.values()]
    taken: list[Pair] = []
    while len(taken) < limit:
        taken += [p for p in (next(q, None) for q in queues) if p is not None][: limit - len(taken)]
    return taken


def alternate_same_and_different(pairs: list[Pair]) -> list[Pair]:
    """Same-person and different-person pairs in turn (each kind in its order), the rest of
    the more numerous kind at the end."""
    same, different = [p for p in pairs if p.same], [p for p in pairs if not p.same]
    mixed = [p for duo in zip(same, different) for p in duo]
    n = min(len(same), len(different))
    return mixed + same[n:] + different[n:]


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The distance threshold (same if distance <= threshold) with the highest accuracy;
    candidates are midpoints between consecutive sorted distances (and the ends)."""
    d = np.sort(np.unique(distances))
    candidates = np.concatenate([[d[0] - 1e-6], (d[:-1] + d[1:]) / 2, [d[-1] + 1e-6]])
    acc = [((distances <= t) == same).mean() for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def kfold_decisions(distances, same, folds, threshold_distances=None) -> tuple[np.ndarray, list[float]]:
    """Per pair, whether it is decided right by its fold's threshold, the one best on all
    other folds; and those thresholds, one per fold. A pair with a NaN distance (a failed
    encoding) counts as a wrong decision, so failures are not hidden.

    threshold_distances: choose each fold's threshold on these distances of the other
    folds instead (the real pairs, when `distances` has reconstructions in it): the
    system's threshold, set on real faces, which an attacker cannot move. The paper
    chooses it on the replaced folds, which adapts the system to the attack."""
    distances, same, folds = np.asarray(distances, float), np.asarray(same, bool), np.asarray(folds)
    chooser = distances if threshold_distances is None else np.asarray(threshold_distances, float)
    valid = np.isfinite(distances)
    if len(np.unique(folds[valid])) < 2:
        raise ValueError(f"k-fold verification needs usable pairs in at least 2 folds; got folds {sorted(set(folds[valid].tolist()))}")
    correct, thresholds = np.zeros(len(distances), bool), []
    for k in np.unique(folds):
        train = (folds != k) & np.isfinite(chooser)
        t = best_threshold(chooser[train], same[train])
        test = folds == k
        correct[test] = np.where(valid[test], (distances[test] <= t) == same[test], False)
        thresholds.append(t)
    return correct, thresholds


def kfold_accuracy(distances, same, folds, threshold_distances=None) -> dict:
    """Mean and std of accuracy over folds (kfold_decisions: each fold judged with the
    threshold that is best on the other folds, of these distances or of `threshold_distances`)."""
    return fold_summary(*kfold_decisions(distances, same, folds, threshold_distances), folds, distances)


def fold_summary(correct: np.ndarray, thresholds: list[float], folds, distances) -> dict:
    """kfold_accuracy's numbers from kfold_decisions' output (for a caller that keeps both)."""
    folds = np.asarray(folds)
    accs = [correct[folds == k].mean() for k in np.unique(folds)]
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "folds": [float(a) for a in accs],
            "thresholds": thresholds, "failed_pairs": int((~np.isfinite(np.asarray(distances, float))).sum())}


def roc_auc(distances, same) -> float:
    """Probability that a different-person pair is farther apart than a same-person pair."""
    from scipy.stats import rankdata

    d, s = np.asarray(distances, float), np.asarray(same, bool)
    ok = np.isfinite(d)
    d, s = d[ok], s[ok]
    ranks = rankdata(d)
    n_same, n_diff = s.sum(), (~s).sum()
    return float((ranks[~s].sum() - n_diff * (n_diff + 1) / 2) / (n_same * n_diff))
