"""The diffusion process: schedules, likelihood terms, training loss, respacing."""

from id3pm.diffusion.gaussian import GaussianDiffusion
from id3pm.diffusion.respace import respace, space_timesteps
from id3pm.diffusion.schedules import make_betas

__all__ = ["GaussianDiffusion", "make_betas", "respace", "space_timesteps"]
