"""The model card of GET /v1/model: what a client may know about the model, and no file paths.

A model's info records where it was trained from (data folders, warm-start models, output
folders); a public server must not tell those, so `scrub` drops every path-like key and value.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import numpy as np

from id3pm.images import SYNTHETIC_NOTICE
from id3pm.sampling import SAMPLERS
from id3pm.serving.limits import Limits

PATH_KEYS = {"path", "from", "url", "init_from", "root", "out", "dir", "file", "samples"}
WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


def looks_like_path(v: Any) -> bool:
    return isinstance(v, str) and (v.startswith(("/", "~", "./", "../", "\\\\")) or bool(WINDOWS_PATH.match(v)))


def scrub(obj: Any) -> Any:
    """`obj` without file paths (and without bulky training samples)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()
                if k not in PATH_KEYS and not k.endswith(("_path", "_dir", "_file", "_url")) and not looks_like_path(v)}
    if isinstance(obj, list):
        return [scrub(v) for v in obj if not looks_like_path(v)]
    if isinstance(obj, float) and not np.isfinite(obj):  # JSON has no NaN
        return None
    return obj


def build_model_card(pipe, directions: dict, limits: Limits, *, encoder: str, metric: str) -> dict:
    """Task, sizes, encoder, training summary, directions and limits of a served pipeline."""
    info = pipe.info
    return {
        "task": info.get("task"), "image_size": pipe.image_size, "id_dim": pipe.id_dim,
        "encoder": {"name": encoder, "distance": metric},
        "adapter": None if pipe.adapter is None else {  # templates of `encoder` mapped into the model's space
            "into": pipe.adapter.config.target["name"], "kind": pipe.adapter.config.kind},
        "samplers": sorted(SAMPLERS),
        "directions": [{"name": d.name, **scrub({k: v for k, v in d.provenance.items()
                                                  if k in ("kind", "label", "component", "encoder")})}
                       for d in directions.values()],
        "limits": {k: v for k, v in asdict(limits).items() if k not in ("window_s",)},
        "synthetic_notice": SYNTHETIC_NOTICE,
        "info": scrub({k: v for k, v in info.items() if k != "format"}),
    }
