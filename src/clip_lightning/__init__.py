"""clip-lightning: CLIP-style image-text dual encoders on PyTorch Lightning and Hydra."""

from clip_lightning.errors import ClipLightningError, DataError, ModelLoadError

__all__ = ["ClipLightningError", "DataError", "ModelLoadError"]
__version__ = "0.1.0"
