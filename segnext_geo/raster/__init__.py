"""segnext_geo.raster."""
