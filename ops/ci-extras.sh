#!/usr/bin/env bash
# Extra tools for the ops tests (tests/ops): promtool and a Prometheus server,
# from Debian's "prometheus" package.  Run before the test suite, e.g. from
# .ci/run:   bash ops/ci-extras.sh
#
# Without them the promtool and live-Prometheus tests are skipped on a
# developer's machine and FAIL when CI is set, so a missing install is seen.
set -euo pipefail

have_tools() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

if have_tools; then
    echo "ci-extras: $(promtool --version 2>&1 | head -n 1) already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ci-extras: installing Debian's prometheus package (promtool, prometheus) ..."
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq >/dev/null \
        && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
        if have_tools; then
            echo "ci-extras: $(promtool --version 2>&1 | head -n 1) installed"
            exit 0
        fi
    fi
    echo "ci-extras: WARNING: installing prometheus failed; the promtool and Prometheus checks in tests/ops will be skipped (and fail when CI is set)" >&2
    exit 0
fi

echo "ci-extras: not root or no apt-get: promtool and Prometheus checks in tests/ops will be SKIPPED (and fail when CI is set); install Debian's prometheus package to run them" >&2
