"""segnext_geo.train."""
