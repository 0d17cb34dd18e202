"""SegNeXt in plain PyTorch: MSCAN encoder, LightHamHead decoder, checkpoint loading.

Imports only torch (no rasterio, torchgeo, lightning or dask).
"""

from .checkpoint import CheckpointError, describe_checkpoint, inspect_checkpoint, load_model, save_checkpoint
from .ham import NMF2D, LightHamHead
from .meta import IMAGENET_MEAN, IMAGENET_STD, ModelMeta
from .mscan import MSCAN
from .segnext import VARIANTS, SegNeXt, build_model, canonical_variant

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MSCAN",
    "NMF2D",
    "VARIANTS",
    "CheckpointError",
    "LightHamHead",
    "ModelMeta",
    "SegNeXt",
    "build_model",
    "canonical_variant",
    "describe_checkpoint",
    "inspect_checkpoint",
    "load_model",
    "save_checkpoint",
]
