"""The ID-conditioned U-Net: an ADM-style denoiser that knows nothing about diffusion.

It maps (noisy image x_t, timestep t, identity vector y, optional attributes a) to
6 channels: the predicted noise (3) and the variance interpolation value v (3) of
"improved DDPM". The identity vector goes through ONE learnable Linear layer and is
added to the timestep embedding (ID3PM, Kansy et al. 2023); attributes the same way.

The convolutional body is diffusers' `UNet2DModel` with scale-shift norm
("resnet_time_scale_shift='scale_shift'", as in ADM) and `class_embed_type='identity'`
so that our conditioning embedding is simply summed with the time embedding.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

# Block layouts by depth: attention only where the feature map is 16x16 or smaller
# for a 64x64 input (ADM uses attention at 32, 16 and 8; the paper's model at 16 and 8).


def block_types(
    sample_size: int, num_levels: int, attention_resolutions: tuple[int, ...]
) -> tuple[list[str], list[str]]:
    """Down/up block names so that levels whose input resolution is in
    `attention_resolutions` get self-attention."""
    down, up = [], []
    for level in range(num_levels):
        resolution = sample_size // 2**level
        down.append("AttnDownBlock2D" if resolution in attention_resolutions else "DownBlock2D")
    for level in reversed(range(num_levels)):
        resolution = sample_size // 2**level
        up.append("AttnUpBlock2D" if resolution in attention_resolutions else "UpBlock2D")
    return down, up


class IDConditionedUNet(ModelMixin, ConfigMixin):
    """Noise-and-variance predictor conditioned on an identity vector (and attributes)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,  # image side in pixels
        in_channels: int = 3,  # RGB
        out_channels: int = 6,  # eps (3) + variance interpolation v (3)
        block_out_channels: tuple[int, ...] = (64, 128, 192, 256),  # width per resolution level
        layers_per_block: int = 2,  # residual blocks per level (ADM: 2-3)
        attention_resolutions: tuple[int, ...] = (16, 8),  # feature-map sides that get attention
        attention_head_dim: int = 64,  # channels per attention head (ADM: 64)
        norm_num_groups: int = 32,  # GroupNorm groups
        dropout: float = 0.1,  # residual-block dropout (ADM 64x64: 0.1)
        id_dim: int = 128,  # length of the black-box identity vector
        id_scale: float = 1.0,  # multiplies y before the Linear so its entries are O(1)
        attr_dim: int = 0,  # length of the optional attribute vector (0: none)
        null_condition: str = "zero",  # "zero": dropped y is the zero vector; "learned": a learned embedding
        extra_cond_channels: int = 0,  # extra input channels concatenated to x (super-resolution: low-res image)
        use_level_embedding: bool = False,  # super-resolution: embed a noise-augmentation level
        mid_attention: bool = True,  # self-attention in the middle block (off: fully convolutional)
    ):
        super().__init__()
        if null_condition not in ("zero", "learned"):
            raise ValueError(f"null_condition must be 'zero' or 'learned', got {null_condition!r}")
        down, up = block_types(sample_size, len(block_out_channels), tuple(attention_resolutions))
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels + extra_cond_channels,
            out_channels=out_channels,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
            resnet_time_scale_shift="scale_shift",
            # diffusers drops the mid-block attention's GroupNorm under scale-shift norm; ADM has it.
            attn_norm_num_groups=norm_num_groups,
            add_attention=mid_attention,
            class_embed_type="identity",  # our condition embedding is added to the time embedding as is
        )
        embed_dim = block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.id_embedding = nn.Linear(id_dim, embed_dim) if id_dim > 0 else None
        self.null_id_embedding = (
            nn.Parameter(torch.zeros(embed_dim)) if null_condition == "learned" and id_dim > 0 else None
        )
        # Attributes enter with their "is set" mask, so the model can tell "unset" from "zero".
        self.attr_embedding = nn.Linear(2 * attr_dim, embed_dim) if attr_dim > 0 else None
        self.level_embedding = None
        if use_level_embedding:
            self.level_embedding = nn.Sequential(
                Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0),
                TimestepEmbedding(block_out_channels[0], embed_dim),
            )

    def condition_embedding(
        self,
        batch: int,
        device: torch.device,
        id_vector: torch.Tensor | None,
        drop_id: torch.Tensor | None,
        attributes: torch.Tensor | None,
        attr_mask: torch.Tensor | None,
        level: torch.Tensor | None,
    ) -> torch.Tensor:
        cfg = self.config
        emb = torch.zeros(batch, cfg.block_out_channels[0] * 4, device=device, dtype=self.dtype)
        if self.id_embedding is not None:
            if id_vector is None:
                raise ValueError("this model is ID-conditioned: pass id_vector")
            y = id_vector.to(self.dtype) * cfg.id_scale
            keep = torch.ones(batch, 1, device=device, dtype=self.dtype)
            if drop_id is not None:
                keep = (~drop_id.bool()).to(self.dtype).view(batch, 1)
            if self.null_id_embedding is None:
                # "y is replaced by the zero vector": Linear(0) is just the bias.
                emb = emb + self.id_embedding(y * keep)
            else:
                emb = emb + keep * self.id_embedding(y) + (1 - keep) * self.null_id_embedding
        if self.attr_embedding is not None:
            if attributes is None:
                attributes = torch.zeros(batch, cfg.attr_dim, device=device, dtype=self.dtype)
                attr_mask = torch.zeros_like(attributes)
            mask = torch.ones_like(attributes) if attr_mask is None else attr_mask.to(attributes.dtype)
            emb = emb + self.attr_embedding(torch.cat([attributes * mask, mask], dim=1).to(self.dtype))
        if self.level_embedding is not None:
            lev = torch.zeros(batch, device=device) if level is None else level.to(device).float()
            emb = emb + self.level_embedding(lev).to(self.dtype)
        return emb

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        id_vector: torch.Tensor | None = None,
        drop_id: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        attr_mask: torch.Tensor | None = None,
        cond_image: torch.Tensor | None = None,
        level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, 3, H, W) noisy image; t: (B,) timesteps of the ORIGINAL schedule;
        id_vector: (B, id_dim); drop_id: (B,) bool, True where the identity is dropped
        (classifier-free guidance); attributes/attr_mask: (B, attr_dim);
        cond_image: (B, C, H, W) extra input channels (super-resolution);
        level: (B,) noise-augmentation level of cond_image. Returns (B, 6, H, W)."""
        batch = x.shape[0]
        if t.ndim == 0:
            t = t.expand(batch)
        emb = self.condition_embedding(batch, x.device, id_vector, drop_id, attributes, attr_mask, level)
        if self.config.extra_cond_channels:
            if cond_image is None:
                raise ValueError("this model needs cond_image (the low-resolution input)")
            x = torch.cat([x, cond_image.to(x.dtype)], dim=1)
        return self.unet(x, t, class_labels=emb).sample

    def regress(self, id_vector: torch.Tensor) -> torch.Tensor:
        """The one-to-one decoder g(y) (the paper's Eq. 4 baseline; a model trained with
        `--task regression`): one forward on a fixed coordinate canvas at t = 0.
        Returns (B, out_channels, H, W); the image is the first 3 channels."""
        b, size = id_vector.shape[0], self.config.sample_size
        canvas = coordinate_canvas(b, size, id_vector.device).to(self.dtype)
        return self(canvas, torch.zeros(b, dtype=torch.long, device=id_vector.device), id_vector=id_vector)


def coordinate_canvas(batch: int, size: int, device) -> torch.Tensor:
    """(B, 3, size, size): u, v in [-1, 1] and 1 - u^2 - v^2. The regression decoder's
    input: on a constant input every GroupNorm outputs a constant map and only the
    convolutions' zero padding tells pixels apart (measured: a 15-minute pilot fed zeros
    stayed near the mean face's error), while coordinates let it place features."""
    line = torch.linspace(-1, 1, size, device=device)
    v, u = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([u, v, 1 - u**2 - v**2]).expand(batch, 3, size, size)

