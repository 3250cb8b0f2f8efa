"""Training checkpoints that survive a kill: model, EMA, optimizer and step, all as
safetensors + JSON (no pickle), written to a temporary folder and swapped in by
rename. All training randomness is derived from (seed, step), so these four are
everything an exact resume needs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from id3pm.files import atomic_write_json, complete_folder, read_json


def _flat_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"state.{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _cpu_tensors(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _save_optimizer(optimizer, path_stem: Path) -> None:
    tensors, meta = _flat_optimizer_state(optimizer)
    save_file(tensors, path_stem.with_suffix(".safetensors"))
    atomic_write_json(path_stem.with_suffix(".json"), meta)


def _load_optimizer(optimizer, path_stem: Path, device) -> None:
    tensors = load_file(path_stem.with_suffix(".safetensors"), device=str(device))
    _restore_optimizer_state(optimizer, tensors, read_json(path_stem.with_suffix(".json")))


def save_checkpoint(folder: str | Path, model: torch.nn.Module, ema: dict, optimizer, state: dict,
                    extra_json: dict[str, dict] | None = None, parts: dict | None = None) -> None:
    """Everything a resume needs, written completely before it replaces the previous
    checkpoint (id3pm.files.complete_folder): a kill or a full disk keeps the old one.
    `parts`: {name: (module, optimizer)} trained beside the model (a discriminator)."""
    with complete_folder(folder, "a checkpoint") as tmp:
        save_file(_cpu_tensors(model.state_dict()), tmp / "model.safetensors")
        save_file(_cpu_tensors(ema), tmp / "ema.safetensors")
        _save_optimizer(optimizer, tmp / "optimizer")
        for name, (module, part_optimizer) in (parts or {}).items():
            save_file(_cpu_tensors(module.state_dict()), tmp / f"{name}.safetensors")
            _save_optimizer(part_optimizer, tmp / f"{name}_optimizer")
        for name, obj in (extra_json or {}).items():
            atomic_write_json(tmp / name, obj)
        atomic_write_json(tmp / "state.json", state)  # last: its presence marks a complete checkpoint


def find_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint, also after a crash between the two renames."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "state.json").exists():
            return candidate
    return None


def load_checkpoint(folder: Path, model: torch.nn.Module, ema: dict, optimizer, device,
                    parts: dict | None = None) -> dict:
    model.load_state_dict(load_file(folder / "model.safetensors", device=str(device)))
    for k, v in load_file(folder / "ema.safetensors", device=str(device)).items():
        ema[k].copy_(v)
    _load_optimizer(optimizer, folder / "optimizer", device)
    for name, (module, part_optimizer) in (parts or {}).items():
        if not (folder / f"{name}.safetensors").exists():
            raise FileNotFoundError(f"{folder}: the checkpoint has no {name} (the run was started without it)")
        module.load_state_dict(load_file(folder / f"{name}.safetensors", device=str(device)))
        _load_optimizer(part_optimizer, folder / f"{name}_optimizer", device)
    return read_json(folder / "state.json")


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, and a line cut short
    by a crash or a full disk."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    path.write_text("".join(line + "\n" for line in keep))
