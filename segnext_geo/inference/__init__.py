"""segnext_geo.inference."""
