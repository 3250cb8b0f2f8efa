"""A trained model on disk: what `id3pm train` writes and everything else loads.

    MODEL_DIR/
      id3pm.json                 what the network means: task, image size, noise
                                 schedule, conditioning encoder, attribute statistics
      unet/config.json           the network's constructor arguments
      unet/*.safetensors         the EMA weights (sharded when large)

Weights are only ever read from safetensors: never unpickle a file a user hands us.
"""

from __future__ import annotations

from pathlib import Path

import torch

from id3pm.files import atomic_write_json, read_json
from id3pm.modelcheck import check_model_folder, file_hashes
from id3pm.models import IDConditionedUNet

FORMAT = "id3pm-model/1"

# Network sizes (64x64, 128-d vectors): parameters, forward GFLOP per image.
# "base" is the reference model: 23.1M parameters, 15.0 GFLOP, 44 MiB as fp16 (it must
# ship in <= 48 MiB of safetensors). "small" (19.4M, 13.1 GFLOP) for quick runs, "large"
# (92M, 60 GFLOP) for GPU users who do not ship weights, "tiny" for tests and smoke demos.
PRESETS = {
    "tiny": dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=32, norm_num_groups=8, dropout=0.0),
    "small": dict(block_out_channels=(64, 128, 128, 256), layers_per_block=2, attention_head_dim=64, norm_num_groups=32, dropout=0.1),
    "base": dict(block_out_channels=(64, 128, 192, 256), layers_per_block=2, attention_head_dim=64, norm_num_groups=32, dropout=0.1),
    # 32x32 candidates for the CPU-trained reference model (<= 12M parameters: <= 24 MiB fp16)
    "compact": dict(block_out_channels=(48, 96, 192), layers_per_block=2, attention_head_dim=48, norm_num_groups=16, dropout=0.1),
    "mini": dict(block_out_channels=(32, 64, 128, 192), layers_per_block=2, attention_resolutions=(8, 4), attention_head_dim=32, norm_num_groups=16, dropout=0.1),
    # super-resolution on CPU: no attention anywhere, so that a network trained on small
    # windows of 128 px faces (--patch-size) sees the same receptive field on whole faces
    "sr": dict(block_out_channels=(32, 64, 96, 128), layers_per_block=2, attention_resolutions=(), mid_attention=False, attention_head_dim=32, norm_num_groups=16, dropout=0.0),
    "large": dict(block_out_channels=(128, 256, 384, 512), layers_per_block=2, attention_head_dim=64, norm_num_groups=32, dropout=0.1),
}


SHIPPED = {"base": "id3pm-utkface-32", "superres": "id3pm-celeba-sr128"}  # folders under weights/


def shipped_path(task: str = "base") -> Path | None:
    """A model shipped in the repository's weights/ folder (or ./weights), if present."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "weights" / SHIPPED[task]
        if (candidate / "id3pm.json").exists():
            return candidate
    return None


def save_model_dir(path: str | Path, model: IDConditionedUNet, info: dict, max_shard_size: str = "15MB",
                   dtype: torch.dtype | None = None) -> Path:
    """dtype=torch.float16 halves the files (for shipping); loading casts back to float32."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        import copy

        # _apply, not .to(): diffusers warns on .to(dtype) of a model it did not load
        model = copy.deepcopy(model)._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
    model.save_pretrained(path / "unet", safe_serialization=True, max_shard_size=max_shard_size)
    # the weights' hashes, so that a flipped bit in tensor data is refused at load (id3pm.modelcheck)
    atomic_write_json(path / "id3pm.json", {"format": FORMAT, **info, "sha256": file_hashes(path)})
    return path


def read_info(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "id3pm.json").exists():
        raise FileNotFoundError(f"{path}: not an id3pm model folder (no id3pm.json)")
    info = read_json(path / "id3pm.json")
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported model format {info.get('format')!r}")
    return info


def load_model_dir(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(network in eval mode, info dict). The folder is checked first (id3pm.modelcheck):
    model folders come from anyone."""
    path = Path(path)
    info = read_info(path)
    check_model_folder(path, info)
    model = IDConditionedUNet.from_pretrained(path / "unet", use_safetensors=True, local_files_only=True, torch_dtype=dtype)
    return model.to(device).eval(), info
