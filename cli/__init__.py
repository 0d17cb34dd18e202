"""The ``segnext-geo`` command line (installed as the ``segnext_geo.cli`` package)."""
