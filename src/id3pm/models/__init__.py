"""Denoising networks."""

from id3pm.models.unet import IDConditionedUNet

__all__ = ["IDConditionedUNet"]
