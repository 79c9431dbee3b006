#!/usr/bin/env bash
# What the book's site and its browser test need besides Python packages, installed only when missing:
#   * MathJax 3, served from the site itself (the build copies .cache/book-static/ into _static/), so that math
#     renders with the network off. Source: the npm package `mathjax` (pinned below).
#   * Chromium (Debian's package), which tests/test_book.py drives headless to check the built pages.
#   * espeak-ng (Debian), which speaks the words in the multimodal clips (minipeft.datasets.world).
# Safe to run again: each step first checks whether its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MATHJAX_VERSION=3.2.2
STATIC=.cache/book-static            # book/_config.yml lists this folder in html_static_path
MATHJAX_DIR="$STATIC/mathjax"

apt_install() {
  # Debian: refresh the package lists once, then install; only root can do this.
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_book_assets: '$*' is missing and this is not a Debian/Ubuntu system; install it by hand." >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_book_assets: '$*' is missing; run 'sudo apt-get install -y $*' (or run this script as root)." >&2
    return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- MathJax -------------------------------------------------------------------------------------------------------
if [ -f "$MATHJAX_DIR/tex-mml-chtml.js" ] && grep -q "$MATHJAX_VERSION" "$MATHJAX_DIR/VERSION" 2>/dev/null; then
  echo "setup_book_assets: MathJax $MATHJAX_VERSION already in $MATHJAX_DIR"
else
  command -v npm >/dev/null 2>&1 || apt_install npm
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  npm install --prefix "$work" --no-save --no-audit --no-fund --silent "mathjax@$MATHJAX_VERSION"
  es5="$work/node_modules/mathjax/es5"
  rm -rf "$MATHJAX_DIR"
  mkdir -p "$MATHJAX_DIR/input" "$MATHJAX_DIR/output"
  # Only what a page loads: the combined TeX+MathML -> CommonHTML component, the TeX extensions it may autoload,
  # the CommonHTML fonts, and the right-click menu with its accessibility parts (loaded on demand).
  cp "$es5/tex-mml-chtml.js" "$MATHJAX_DIR/"
  cp -r "$es5/input/tex" "$MATHJAX_DIR/input/"
  cp -r "$es5/output/chtml" "$MATHJAX_DIR/output/"
  cp -r "$es5/ui" "$es5/a11y" "$es5/sre" "$MATHJAX_DIR/"
  cp "$work/node_modules/mathjax/LICENSE" "$MATHJAX_DIR/LICENSE"
  echo "mathjax $MATHJAX_VERSION (npm), es5 build; copied by tools/setup_book_assets.sh" > "$MATHJAX_DIR/VERSION"
  echo "setup_book_assets: MathJax $MATHJAX_VERSION installed into $MATHJAX_DIR ($(du -sh "$MATHJAX_DIR" | cut -f1))"
fi

# --- Chromium (for the browser test) -------------------------------------------------------------------------------
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  echo "setup_book_assets: chromium already installed"
else
  # fonts-dejavu-core: readable text in the screenshots on a machine without desktop fonts.
  # Not fatal: without a browser the site still builds; the browser test then skips and says why.
  if apt_install chromium fonts-dejavu-core; then
    echo "setup_book_assets: chromium installed"
  else
    echo "setup_book_assets: WARNING: no chromium; tests/test_book.py's browser test will be skipped." >&2
  fi
fi

# --- espeak-ng (spoken words in the multimodal world's clips, minipeft.datasets.world) -----------------------------
if command -v espeak-ng >/dev/null 2>&1; then
  echo "setup_book_assets: espeak-ng already installed"
elif apt_install espeak-ng; then
  echo "setup_book_assets: espeak-ng installed"
else
  echo "setup_book_assets: WARNING: no espeak-ng; clips are made without speech and the speech tests skip." >&2
fi
