"""Checks a model folder before anything in it is loaded: a folder may come from anyone.

- Every file read stays inside the folder (a symlink that leaves it is refused).
- Weights are safetensors whose header is parsed here, bounded and consistent with the
  file's size, so a truncated file, a flipped header bit or a pickle under a
  .safetensors name is refused in one line (and never unpickled: nothing here or in
  diffusers' safetensors path calls pickle).
- The network's config is checked for absurd sizes, then the network is built on the
  meta device (no memory) and its tensor names and shapes must equal the weights'.
- Where id3pm.json records the weight files' SHA-256 (save_model_dir does), they must
  match: a flipped bit in the tensor data changes no size or shape.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 16 * 2**20  # a safetensors header lists names and shapes: a few KiB per thousand tensors
MAX_PARAMETERS = 2_000_000_000  # 8 GB in fp32: more than any id3pm preset by 20x
MAX_CONFIG_INT = 100_000  # no channel count, layer count or size of a sane U-Net comes near it
MAX_CONFIG_LIST = 64
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ModelFolderError(ValueError):
    """A model folder that must not be loaded; the message names the file and the reason."""


def inside(root: Path, relative: str) -> Path:
    """root/relative, refused unless it resolves (symlinks followed) inside root."""
    path = root / relative
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise ModelFolderError(f"{path}: points outside the model folder ({resolved})")
    return path


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of a safetensors file whose header and data region agree
    with its size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelFolderError(f"{path}: not a safetensors file (header length {n} for a file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFolderError(f"{path}: corrupt safetensors header ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    tensors, end = {}, 0
    for name, spec in sorted(header.items(), key=lambda kv: _offsets(path, kv)[0]):
        start, stop = _offsets(path, (name, spec))
        dtype, shape = spec.get("dtype"), spec.get("shape")
        if dtype not in DTYPE_BYTES or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ModelFolderError(f"{path}: corrupt safetensors header (tensor {name!r})")
        numel = 1
        for d in shape:
            numel *= d
        if start != end or stop - start != numel * DTYPE_BYTES[dtype]:
            raise ModelFolderError(f"{path}: corrupt safetensors header (tensor {name!r} at bytes {start}-{stop})")
        tensors[name], end = (dtype, tuple(shape)), stop
    if 8 + n + end != size:
        raise ModelFolderError(f"{path}: truncated or padded: the header describes {8 + n + end} bytes, the file has {size}")
    return tensors


def _offsets(path: Path, item) -> tuple[int, int]:
    name, spec = item
    offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ModelFolderError(f"{path}: corrupt safetensors header (tensor {name!r})")
    return offsets[0], offsets[1]


def weight_files(unet: Path) -> list[Path]:
    """The safetensors files the network loads: the single file, or the shards its index names."""
    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    single = unet / "diffusion_pytorch_model.safetensors"
    if index.exists() or index.is_symlink():
        try:
            names = sorted(set(json.loads(inside(unet, index.name).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ModelFolderError(f"{index}: corrupt shard index") from None
        for name in names:
            if not isinstance(name, str) or Path(name).name != name:
                raise ModelFolderError(f"{index}: shard name {name!r} is not a file of {unet}")
        files = [inside(unet, name) for name in names]
    elif single.exists() or single.is_symlink():
        files = [inside(unet, single.name)]
    else:
        raise ModelFolderError(f"{unet}: no safetensors weights (other weight formats are never loaded)")
    for f in files:
        if not f.is_file():
            raise ModelFolderError(f"{f}: missing weight file")
    return files


def check_config(path: Path, config) -> None:
    """Refuse sizes no network could have, before anything is built."""
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: not a JSON object")

    def walk(key, value):
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (int, float)):
            if not abs(value) <= MAX_CONFIG_INT:  # also NaN
                raise ModelFolderError(f"{path}: {key} = {value} is beyond any sane network (limit {MAX_CONFIG_INT})")
        elif isinstance(value, list):
            if len(value) > MAX_CONFIG_LIST:
                raise ModelFolderError(f"{path}: {key} has {len(value)} entries (limit {MAX_CONFIG_LIST})")
            for v in value:
                walk(key, v)
        else:
            raise ModelFolderError(f"{path}: {key} has an unexpected value")

    for key, value in config.items():
        if not key.startswith("_"):
            walk(key, value)


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the network the config describes, built on the meta device."""
    import torch

    from id3pm.models import IDConditionedUNet

    with torch.device("meta"):
        model = IDConditionedUNet.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """{path relative to the model folder: SHA-256} of the network's weight files."""
    return {f.relative_to(folder).as_posix(): sha256(f) for f in weight_files(folder / "unet")}


def check_model_folder(folder: str | Path, info: dict) -> None:
    """Raise ModelFolderError (one line, naming the file) unless the folder is safe to load."""
    folder = Path(folder)
    unet = inside(folder, "unet")
    config_path = inside(unet, "config.json")
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{config_path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{config_path}: not JSON ({e.__class__.__name__})") from None
    check_config(config_path, config)
    found: dict[str, tuple[int, ...]] = {}
    holder: dict[str, Path] = {}  # tensor name -> the file that holds it, for errors that name the file
    for f in weight_files(unet):
        for name, (_, shape) in safetensors_header(f).items():
            found[name], holder[name] = shape, f
    total = sum(_numel(s) for s in found.values())
    if total > MAX_PARAMETERS:
        biggest = max(found, key=lambda k: _numel(found[k]))
        raise ModelFolderError(f"{holder[biggest]}: {total:,} parameters in {unet.name}/ (limit {MAX_PARAMETERS:,})")
    try:
        expected = expected_tensors(config)
    except Exception as e:  # a config the network class rejects
        first_line = (str(e).splitlines() or [""])[0]
        raise ModelFolderError(f"{config_path}: does not describe an id3pm network ({e.__class__.__name__}: {first_line})") from None
    if found != expected:
        raise ModelFolderError(mismatch(unet, found, expected, holder))
    for relative, digest in (info.get("sha256") or {}).items():
        if sha256(inside(folder, relative)) != digest:
            raise ModelFolderError(f"{folder / relative}: SHA-256 differs from id3pm.json's (corrupt file)")


def mismatch(unet: Path, found: dict, expected: dict, holder: dict) -> str:
    """One line naming the weight file whose tensors the config does not describe (a bit
    flipped in a tensor's name or shape), or the folder when a tensor is only missing."""
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    missing = sorted(set(expected) - set(found))
    if wrong:
        return f"{holder[wrong[0]]}: {wrong[0]} is {found[wrong[0]]}, config.json says {expected[wrong[0]]}"
    if extra:
        return f"{holder[extra[0]]}: tensor {extra[0]!r} is not in the network config.json describes"
    return f"{unet}: the weights lack {missing[0]}, which config.json describes"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
