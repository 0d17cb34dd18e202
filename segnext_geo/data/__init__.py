"""segnext_geo.data."""
