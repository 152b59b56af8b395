"""Errors a user can fix. Entry points print them as one clear line instead of a stack trace."""


class ClipLightningError(Exception):
    """Base class: the message names the problem and the fix."""


class DataError(ClipLightningError):
    """The dataset is missing, malformed, or does not match the configuration."""


class ModelLoadError(ClipLightningError):
    """Encoder weights, configs or tokenizers could not be loaded."""


class CheckpointError(ClipLightningError):
    """A checkpoint is missing or does not belong to this model."""
