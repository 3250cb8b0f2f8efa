"""id3pm: controllable inversion of black-box face recognition models via diffusion."""

__version__ = "0.1.0"
