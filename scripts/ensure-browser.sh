#!/usr/bin/env bash
# Make Debian's headless Chromium available for the browser tests, when this machine allows it.
# Never downloads a browser build of its own (no `playwright install`); without root or apt the
# browser tests skip with a message naming what is missing.
set -u
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -qq >/dev/null 2>&1 || true
    timeout 1200 apt-get install -y -qq chromium >/dev/null 2>&1 \
        || echo "could not install chromium: browser tests will be skipped"
else
    echo "no /usr/bin/chromium and no root apt-get: browser tests will be skipped"
fi
exit 0
