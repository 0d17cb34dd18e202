"""SegNeXt in plain PyTorch: MSCAN encoder, LightHamHead decoder, checkpoint loading, published weights.

``load_model("segnext_t_isaid")`` works like a path: catalogue names (:func:`list_weights`) and URLs
are downloaded into the cache once and verified (:mod:`segnext_geo.models.hub`).

Imports only torch (no rasterio, torchgeo, lightning or dask).
"""

from .checkpoint import CheckpointError, describe_checkpoint, inspect_checkpoint, load_model, save_checkpoint
from .ham import NMF2D, LightHamHead
from .meta import IMAGENET_MEAN, IMAGENET_STD, ModelMeta
from .mscan import MSCAN
from .segnext import VARIANTS, SegNeXt, build_model, canonical_variant
from .weights import Weights, get_weights, list_weights, register_weights

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
    "Weights",
    "build_model",
    "canonical_variant",
    "describe_checkpoint",
    "get_weights",
    "inspect_checkpoint",
    "list_weights",
    "load_model",
    "register_weights",
    "save_checkpoint",
]
