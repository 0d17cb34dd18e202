"""segnext_geo.vector."""
