"""`id3pm merge`: several prepared sets as one training set, without copying a crop.

The merged folder holds only a manifest naming its sources; `PreparedDataset` reads
each source's shards, prefixes every key with the source's name (`celeba/000001.jpg`)
and adds a `source` column, so that training can balance its draws across sources
(id3pm.data.balance) and evaluation can tell them apart. Each source keeps its own
train/holdout split: a set split by identity stays identity-disjoint in the merge.
"""

from __future__ import annotations

import os
from pathlib import Path

from id3pm.files import atomic_write_json, read_json

MERGED_FORMAT = "id3pm-merged/1"
# what every source must agree on: a crop or a vector from one must mean the same in another
MUST_AGREE = ("id_dim", "distance", "sizes", "attributes", "image_format")


def parse_sources(specs: list[str]) -> dict[str, str]:
    """["utk=PATH", "aug@utk=PATH3", "PATH2"] -> {"utk": PATH, "aug@utk": PATH3, "<folder of PATH2>": PATH2}."""
    sources: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not name.partition("@")[0] or "/" in name:
            raise ValueError(f"{spec}: a source name must be non-empty and without '/' (use NAME=PATH)")
        if name in sources:
            raise ValueError(f"{spec}: two sources named {name!r}")
        sources[name] = path
    if len(sources) < 2:
        raise ValueError("merge needs at least two prepared sets")
    return sources


def merge_prepared(out: str | Path, sources: dict[str, str]) -> dict:
    """Writes OUT/manifest.json for the union of `sources` ({name: prepared folder})."""
    out = Path(out)
    manifests = {}
    for name, path in sources.items():
        if not (Path(path) / "manifest.json").exists():
            raise FileNotFoundError(f"{path}: not a prepared data set (no manifest.json)")
        manifests[name] = read_json(Path(path) / "manifest.json")
        if manifests[name].get("format") == MERGED_FORMAT:
            raise ValueError(f"{path}: is itself a merge; name its sources instead")
    first_name, first = next(iter(manifests.items()))
    for name, m in manifests.items():
        if m["encoder"]["name"] != first["encoder"]["name"]:
            raise ValueError(f"source {name} was encoded by {m['encoder']}, source {first_name} by {first['encoder']}")
        for key in MUST_AGREE:
            if m.get(key) != first.get(key):
                raise ValueError(f"source {name} has {key}={m.get(key)!r}, source {first_name} {first.get(key)!r}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": MERGED_FORMAT,
        **{key: first[key] for key in ("encoder", *MUST_AGREE, "alignment")},
        # relative to the merged folder, so that a tree of data sets can move as a whole
        "sources": [{"name": name.partition("@")[0], "group": name.partition("@")[2] or name.partition("@")[0],
                     "path": os.path.relpath(Path(path).resolve(), out.resolve()),
                     "counts": manifests[name]["counts"], "split_by": manifests[name].get("split_by", "key"),
                     "metadata": manifests[name].get("metadata")} for name, path in sources.items()],
        "counts": {split: sum(m["counts"][split] for m in manifests.values()) for split in ("train", "holdout")},
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
