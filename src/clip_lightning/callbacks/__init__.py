"""Lightning callbacks shipped with clip-lightning (referenced from ``conf/callbacks``)."""

from clip_lightning.callbacks.alignment_plots import AlignmentPlots
from clip_lightning.callbacks.checkpoint import BestAndLastCheckpoint
from clip_lightning.callbacks.ema import EMAWeights
from clip_lightning.callbacks.model_summary import ModelSummary
from clip_lightning.callbacks.preemption import PreemptionCheckpoint
from clip_lightning.callbacks.rng_state import RNGStateCheckpoint
from clip_lightning.callbacks.throughput import Throughput

__all__ = [
    "AlignmentPlots",
    "BestAndLastCheckpoint",
    "EMAWeights",
    "ModelSummary",
    "PreemptionCheckpoint",
    "RNGStateCheckpoint",
    "Throughput",
]
