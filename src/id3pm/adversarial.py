"""An adversarial term for the one-pass upsampler (`id3pm train --task superres
--sr-regression yes --sr-adversarial W`).

L1 alone teaches the median detail: where the 32 px input does not decide (skin, hair,
eyelashes) the median is smooth, and the 128 px faces look like Lanczos with sharper
edges (period 20: KID tied with Lanczos). A discriminator that sees real and upsampled
windows beside their low-res input pushes the upsampler towards detail that looks real,
as pix2pix's conditional PatchGAN does and as ESRGAN fine-tunes its L1 model. The
discriminator never sees a face-recognition model: identity still comes only from y.
It exists only in training; the exported upsampler is the generator alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """Logits on a grid over the window: each judges one patch of the candidate image,
    seen beside the bicubic upsampling of the low-res input it must agree with."""

    def __init__(
        self,
        in_channels: int = 6,  # the candidate window (3) and its bicubic low-res input (3), stacked
        width: int = 32,  # channels of the first layer, doubled by each stride-2 layer
        downsamples: int = 2,  # stride-2 layers: a logit judges a patch of about 2^(downsamples + 3) px
    ):
        super().__init__()
        # Spectral norm bounds each layer's gain: the hinge-loss discriminator stays smooth
        # without a gradient penalty (Miyato et al. 2018), which would cost a second backward.
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, width, 3, padding=1)), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(downsamples):
            layers += [spectral_norm(nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, low], dim=1))


def generator_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """The upsampler's term: raise the discriminator's logits on its own windows."""
    return -fake_logits.mean()


def discriminator_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss (Lim & Ye 2017; SAGAN, BigGAN): real logits above +1, fake below -1."""
    return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()


# The discriminator learns at this multiple of the upsampler's learning rate (TTUR, Heusel
# et al. 2017). Period 21 began at 1x with weight 0.25: a discriminator still near chance
# (hinge 1.98 after 450 steps) was fooled by drift, the upsampler's L1 rising 0.068 -> 0.09.
DISCRIMINATOR_LR_FACTOR = 4.0


class AdversarialTerm:
    """The discriminator, its optimizer and the term's weight in the upsampler's loss."""

    def __init__(self, weight: float, lr: float, device, seed: int = 0):
        self.weight = weight
        torch.manual_seed(seed + 7)  # its initial weights are part of the run's seed
        self.discriminator = PatchDiscriminator().to(device)
        # beta1 0.5 as pix2pix and ESRGAN's fine-tuning: momentum lags behind a moving target
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))

    def generator_loss(self, fake: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """weight x the hinge term, differentiable in `fake` only (no gradient reaches the
        discriminator's weights from the upsampler's step)."""
        self.discriminator.requires_grad_(False)
        try:
            return self.weight * generator_hinge(self.discriminator(fake, low))
        finally:
            self.discriminator.requires_grad_(True)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, low: torch.Tensor, lr: float,
                           backward=None) -> torch.Tensor:
        """One update of the discriminator on this batch's real and (detached) upsampled
        windows, `lr` being the upsampler's; returns its loss. `backward`: accelerate's,
        where gradients are synced."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * DISCRIMINATOR_LR_FACTOR
        loss = discriminator_hinge(self.discriminator(real, low), self.discriminator(fake.detach(), low))
        self.optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(loss)
        self.optimizer.step()
        return loss.detach()
