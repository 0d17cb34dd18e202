"""segnext-geo: SegNeXt semantic segmentation of large georeferenced rasters."""

__version__ = "0.1.0"
