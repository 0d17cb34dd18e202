#!/usr/bin/env bash
# Set up segnext-geo from nothing and print the path of a ready virtual environment.
#
# Dependencies live in a venv outside the clone, keyed on a hash of the dependency
# files (~/.cache/segnext-geo/deps-<hash>), so CI and fresh clones reuse it. The clone
# gets a thin .venv that sees those dependencies through a .pth file and holds an
# editable install of this checkout, so two clones never point at each other.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SEGNEXT_GEO_CACHE:-$HOME/.cache/segnext-geo}"

log() { echo "[bootstrap] $*" >&2; }

find_python() {
    local c
    for c in "${SEGNEXT_GEO_PYTHON:-}" python3.14 python3.13 python3.12 python3 python; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            command -v "$c"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local root; root="$(pyenv root)"
        for c in "$root"/versions/3.1[2-9]*/bin/python3; do
            if [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
                echo "$c"; return 0
            fi
        done
    fi
    return 1
}

PY="$(find_python)" || { echo "error: segnext-geo needs Python >= 3.12 (torchgeo 0.10 requires it); none found on PATH or in pyenv" >&2; exit 1; }
# the requirements (dependencies + the dev and onnx extras), one per line
REQS="$("$PY" - "$ROOT/pyproject.toml" <<'PYEOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(p["dependencies"]) + [r for extra in ("dev", "onnx") for r in p["optional-dependencies"][extra]]
print("\n".join(reqs))
PYEOF
)"
# keyed on what is installed and how (not on the rest of pyproject.toml, so a new subpackage reuses it)
HASH="$( (printf '%s\n' "$REQS"; sed -n '/^# --- install ---$/,/^# --- end install ---$/p' "${BASH_SOURCE[0]}"; "$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
DEPS="$CACHE/deps-$HASH"

# --- install ---
if [ ! -f "$DEPS/.complete" ]; then
    log "creating dependency venv $DEPS with $PY (first run: a few minutes)"
    rm -rf "$DEPS"; mkdir -p "$CACHE"
    "$PY" -m venv "$DEPS"
    "$DEPS/bin/python" -m pip install -q --upgrade pip setuptools wheel
    printf '%s\n' "$REQS" > "$DEPS/requirements.txt"
    "$DEPS/bin/python" -m pip install -q -r "$DEPS/requirements.txt"
    touch "$DEPS/.complete"
    # keep the three newest dependency venvs
    ls -1dt "$CACHE"/deps-* 2>/dev/null | tail -n +4 | xargs -r rm -rf
fi
# --- end install ---

VENV="$ROOT/.venv"
SITE_DEPS="$("$DEPS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.deps" 2>/dev/null)" != "$DEPS" ] || [ ! -e "$VENV/bin/mypy" ]; then
    rm -rf "$VENV"
    "$DEPS/bin/python" -m venv --without-pip "$VENV"
    SITE_VENV="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$SITE_DEPS" > "$SITE_VENV/_segnext_geo_deps.pth"
    echo "$DEPS" > "$VENV/.deps"
    for tool in ruff pytest mypy; do ln -sf "$DEPS/bin/$tool" "$VENV/bin/$tool"; done
fi
if ! "$VENV/bin/python" -c 'import segnext_geo.cli, sys; sys.exit(0)' >/dev/null 2>&1 || [ ! -x "$VENV/bin/segnext-geo" ] \
    || [ "$ROOT/pyproject.toml" -nt "$VENV/.installed" ]; then
    "$DEPS/bin/python" -m pip --python "$VENV/bin/python" install -q --no-deps --no-build-isolation -e "$ROOT" >&2
    touch "$VENV/.installed"
fi
echo "$VENV"
