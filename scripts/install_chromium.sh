#!/usr/bin/env bash
# Install headless Chromium (Debian's package, with a font) for the browser test of the HTML evaluation
# report (tests/test_report.py). Does nothing when a chromium is already on PATH; where apt-get cannot
# be used (not root, or not Debian/Ubuntu) it says so and exits 0: that test is then skipped.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_chromium.sh: chromium not installed (needs root and apt-get); the report's browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
chromium --version
