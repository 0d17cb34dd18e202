"""What ``predict`` reads: a raster path, an http(s) URL of a raster, or a STAC Item -> one :class:`SceneInput`.

A STAC Item (a ``.json`` file, an http(s) URL, or a :class:`~segnext_geo.raster.stac.StacScene`
already chosen by ``batch``) is resolved with :func:`~segnext_geo.raster.stac.resolve_stac`: the
asset (``--asset``, else ``visual``, else red/green/blue by ``eo:bands`` common names), the bands
it names, and the Item's id and datetime for the outputs' tags and the polygons' ``source``.

Remote rasters (``/vsicurl/`` and other network file systems) are read under
:func:`~segnext_geo.raster.cloud.cloud_env`: no directory listing or side-car probing on open,
consecutive ranges merged, a bounded block cache. GDAL reads a tiled COG block by block, so a
window (an area of interest, a tile) downloads only the COG tiles it touches, never the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..raster.cloud import cloud_env, gdal_path, is_remote
from ..raster.stac import StacScene, is_stac, resolve_stac

__all__ = ["AreaMissesScene", "SceneInput", "resolve_input"]


class AreaMissesScene(UserError):
    """The area of interest does not overlap the scene (``batch`` records the scene as skipped)."""


@dataclass(frozen=True)
class SceneInput:
    """A scene ready to open.

    Attributes:
        path: what GDAL opens (a local path, ``/vsicurl/...``, or VRT XML text for a STAC Item
            whose colours are separate assets).
        name: how messages name it (the path, or ``STAC item ID asset A (HREF)``).
        local: the local file, for the check that no output overwrites it (``None`` when remote).
        bands: the bands a STAC asset names in red, green, blue order (``None``: not said).
        tags: tags for the outputs (the STAC Item's id, datetime, assets and href).
        source: the polygons' ``source`` attribute (the path, or ``ITEM_ID@DATETIME``).
        sources: the GDAL paths read (for the network options).
    """

    path: str
    name: str
    local: Path | None
    bands: tuple[int, ...] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""
    sources: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """A short label for the progress bar: the file name, or the Item id."""
        if self.tags.get("STAC_ITEM_ID"):
            return self.tags["STAC_ITEM_ID"]
        return Path(self.path.split("?")[0]).name or self.path

    @property
    def remote(self) -> bool:
        """Whether any file behind the scene is read over the network."""
        return any(is_remote(p) for p in self.sources)

    @contextmanager
    def environment(self) -> Iterator[None]:
        """GDAL's network options (:func:`~segnext_geo.raster.cloud.cloud_env`) for a remote scene."""
        with cloud_env(self.sources) if self.remote else contextlib.nullcontext():
            yield


def resolve_input(scene: str | Path | StacScene, asset: str | None = None) -> SceneInput:
    """The :class:`SceneInput` for ``predict``'s scene argument.

    Raises:
        UserError: an unreadable STAC document, an ItemCollection of several Items (``batch``
            takes those), no asset to read, or ``--asset`` for a scene that is not a STAC Item.
    """
    if isinstance(scene, StacScene):
        return _from_stac(scene)
    text = str(scene)
    if is_stac(text):
        scenes = resolve_stac(text, asset)
        if len(scenes) != 1:
            raise UserError(
                f"{text}: a STAC ItemCollection of {len(scenes)} items; predict reads one Item "
                "(give an Item, or run batch on the collection)"
            )
        return _from_stac(scenes[0])
    if asset is not None:
        raise UserError(f"--asset: only applies to a STAC Item; {text} is a raster")
    try:
        path = gdal_path(text)
    except ValueError as e:
        raise UserError(f"{text}: {e}") from None
    local = Path(text) if path == text and not text.startswith("/vsi") else None
    return SceneInput(path=path, name=text, local=local, source=text, sources=(path,))


def _from_stac(s: StacScene) -> SceneInput:
    local = Path(s.path) if len(s.sources) == 1 and s.path == s.sources[0] and not is_remote(s.path) else None
    return SceneInput(
        path=s.path,
        name=s.name,
        local=local,
        bands=s.bands,
        tags=s.tags,
        source=s.source_label,
        sources=s.sources,
    )
