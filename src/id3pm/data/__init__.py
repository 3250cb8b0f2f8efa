"""Data preparation (photos -> prepared shards) and reading prepared data sets."""

from id3pm.data.dataset import PreparedDataset, TrainingSet
from id3pm.data.prepare import PrepareConfig, prepare

__all__ = ["PrepareConfig", "PreparedDataset", "TrainingSet", "prepare"]
