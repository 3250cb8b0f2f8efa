"""Evaluation: identity distance under two encoders, verification accuracy, diversity,
FID / precision / recall, and baselines (nearest neighbour, regression, random, real)."""

from id3pm.evaluation.evaluate import EvalConfig, Evaluation

__all__ = ["EvalConfig", "Evaluation"]
