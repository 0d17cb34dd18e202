"""``python -m segnext_geo.cli``."""

from .app import main

main()
