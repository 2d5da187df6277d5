#!/usr/bin/env bash
# Install what the Space's browser test needs: Debian's chromium (system package) and the Playwright
# *python* package. Never `playwright install`: Playwright's own browser download cannot be fetched here;
# the test launches /usr/bin/chromium through `executable_path` instead.
# Idempotent: each step is skipped when what it installs is already there.
# Usage (inside the activated venv, so playwright lands in it): bash .ci/install_browser.sh
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium fonts-liberation >/dev/null
fi

if ! python -c "import playwright.sync_api" >/dev/null 2>&1; then
  python -m pip install -q "playwright>=1.40"
fi

/usr/bin/chromium --version 2>/dev/null | head -n 1
python -c "import playwright, importlib.metadata as m; print('playwright', m.version('playwright'))"
