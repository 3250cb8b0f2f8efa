"""Per-image labels: UTKFace file names, CelebA's identity file, All-Age-Faces file
names, or any CSV of per-image labels.

UTKFace names are `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg` (gender 0 male,
1 female; race 0-4: White, Black, Asian, Indian, Others). A few upstream names lack
the race field; they are reported, never guessed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

UTKFACE_RACES = ["White", "Black", "Asian", "Indian", "Others"]
UTKFACE_GENDERS = ["male", "female"]
_UTK = re.compile(r"^(\d{1,3})_([01])_([0-4])_\d+")
_AAF = re.compile(r"^(\d{5})A(\d{2})\.")  # NNNNNAMM.jpg: person NNNNN, age MM


class MetadataError(ValueError):
    pass


def parse_utkface(key: str) -> dict:
    name = PurePosixPath(key).name
    m = _UTK.match(name)
    if not m:
        raise MetadataError(f"{key}: malformed UTKFace name (expected <age>_<gender>_<race>_<date>...)")
    age, gender, race = (int(g) for g in m.groups())
    if age > 120:
        raise MetadataError(f"{key}: implausible UTKFace age {age}")
    return {"age": age, "gender": gender, "race": race}


def parse_aaf(key: str) -> dict:
    """All-Age-Faces: every photo is another person, so the person number is the identity."""
    m = _AAF.match(PurePosixPath(key).name)
    if not m:
        raise MetadataError(f"{key}: malformed All-Age-Faces name (expected NNNNNAMM.jpg)")
    return {"identity": int(m.group(1)), "age": int(m.group(2))}


def read_celeba_identities(path: str | Path) -> dict[str, dict]:
    """CelebA's identity_CelebA.txt (`000001.jpg 2880` a line) -> {file: {"identity": 2880}}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such identity file")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise MetadataError(f"{path}:{n}: expected 'file identity', got {line!r}")
        out[parts[0]] = {"identity": int(parts[1])}
    return out


def read_label_csv(path: str | Path) -> dict[str, dict]:
    """Labels keyed by image: the CSV needs a `key`, `path` or `file` column; the other
    columns become labels (numbers where they parse as numbers)."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        key_col = next((c for c in ("key", "path", "file", "filename") if c in (reader.fieldnames or [])), None)
        if key_col is None:
            raise MetadataError(f"{path}: needs a 'key', 'path' or 'file' column, has {reader.fieldnames}")
        out = {}
        for row in reader:
            key = row.pop(key_col)
            out[key] = {k: _number(v) for k, v in row.items()}
    return out


def _number(v: str):
    if v is None or v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def metadata_parser(spec: str | None) -> Callable[[str], dict] | None:
    """'utkface', 'aaf', 'celeba:IDENTITY_FILE' or 'csv:PATH' -> a function key -> labels
    (raising MetadataError)."""
    if not spec:
        return None
    if spec == "utkface":
        return parse_utkface
    if spec == "aaf":
        return parse_aaf
    if spec.startswith(("csv:", "celeba:")):
        from id3pm.encoders.table import key_variants

        kind, _, path = spec.partition(":")
        table = read_label_csv(path) if kind == "csv" else read_celeba_identities(path)
        lookup = {}
        for k, v in table.items():
            for variant in key_variants(k):
                lookup.setdefault(variant, v)

        def parse(key: str) -> dict:
            for variant in key_variants(key):
                if variant in lookup:
                    return lookup[variant]
            raise MetadataError(f"{key}: no labels in {path}")

        return parse
    raise ValueError(f"unknown metadata {spec!r}: use 'utkface', 'aaf', 'celeba:IDENTITY_FILE' or 'csv:PATH'")
