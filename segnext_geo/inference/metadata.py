"""What the outputs of ``predict`` say about themselves: grid, class names, colours, provenance.

Every raster ``predict`` writes carries, as GeoTIFF metadata tags, how it was made:
``model`` (checkpoint name or variant), ``model_sha256`` (of the weights), ``tile_size``,
``overlap``, ``blend`` (the window actually used), ``tta``, ``precision``, ``device``,
``normalization``, ``bands``, ``gsd`` (``"native"``, or the scene's and the model grid's GSD
when ``--gsd`` resampled) and ``segnext_geo_version``; ``segnext_geo`` holds all of it as JSON.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..models import ModelMeta
from ..raster.gsd import GsdPlan
from ..raster.source import SceneInfo
from ..raster.writer import RasterSpec, class_colormap, json_tag
from .stitcher import ProbsMode

__all__ = ["model_digest", "model_name", "output_specs", "provenance_gsd", "provenance_tags"]


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in key order), hex."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def model_name(model_or_checkpoint: object, meta: ModelMeta) -> str:
    """The checkpoint's file name (or catalogue name / URL as given), else the variant."""
    if isinstance(model_or_checkpoint, str | Path):
        s = str(model_or_checkpoint)
        return Path(s).name if "://" not in s else s
    return meta.variant


def provenance_gsd(plan: GsdPlan) -> str | dict[str, float]:
    """The ``gsd`` tag: ``"native"`` (the model saw the scene's own pixels), or ``{"scene_m", "model_m"}``
    (the scene's GSD and the one it was resampled to); the same for every ``--gsd`` value that decides the same."""
    if plan.target_m is None or plan.scene is None:
        return "native"
    return {"scene_m": round(plan.scene.mean, 6), "model_m": float(plan.target_m)}


def provenance_tags(info: dict[str, Any]) -> dict[str, str]:
    """One tag per entry of ``info`` (strings as they are, the rest as JSON) plus ``segnext_geo`` (all, JSON)."""
    tags = {k: v if isinstance(v, str) else json_tag(v) for k, v in info.items()}
    tags["segnext_geo_version"] = __version__
    tags["segnext_geo"] = json_tag({**info, "segnext_geo_version": __version__})
    return tags


def output_specs(
    info: SceneInfo, meta: ModelMeta, provenance: dict[str, str], probs_mode: ProbsMode
) -> tuple[RasterSpec, RasterSpec]:
    """The class raster's and the probability raster's :class:`~segnext_geo.raster.writer.RasterSpec`."""
    base: dict[str, Any] = {"width": info.width, "height": info.height, "crs": info.crs, "transform": info.transform}
    base |= {"gcps": info.gcps, "gcp_crs": info.gcp_crs}
    names = json_tag(list(meta.class_names))
    classes = RasterSpec(
        count=1,
        nodata=255,
        colormap=class_colormap(meta.palette),
        tags={"class_names": names, **provenance},
        descriptions=("class",),
        overview_resampling="NEAREST",
        **base,
    )
    confidence = probs_mode == "confidence"
    probs = RasterSpec(
        count=1 if confidence else meta.num_classes,
        nodata=None,
        mask=True,
        tags={
            "class_names": names,
            "probs_mode": probs_mode,
            "scale": "probability = value / 255",
            **provenance,
        },
        descriptions=("confidence",) if confidence else tuple(meta.class_names),
        overview_resampling="AVERAGE",
        **base,
    )
    return classes, probs
