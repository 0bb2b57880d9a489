#!/usr/bin/env bash
# Make Debian's nginx binary available for the scale-out tests (tests/scale), when this machine
# allows it. The tests run nginx as their own foreground process with a private prefix and
# config; the system service is never started or touched (the package's postinst may try to
# start it: policy-rc.d forbids that during the install). Without root or apt the tests skip
# with a message.
set -u
if [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's nginx for the scale-out tests (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    timeout 900 apt-get update -qq >/dev/null 2>&1 || true
    timeout 900 apt-get install -y -qq nginx >/dev/null 2>&1 \
        || echo "could not install nginx: the scale-out tests will be skipped"
    if [[ $created_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
else
    echo "no nginx and no root apt-get: the scale-out tests will be skipped"
fi
exit 0
