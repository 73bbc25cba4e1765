#!/usr/bin/env bash
# Debian packages the test suite runs as they are, installed with apt when missing (needs root):
#
#   spamassassin   scores every example Sequence's emails (tests/integration/test_list_headers_spamassassin.py)
#   chromium       the real browser Playwright drives through the preference page (tests/e2e/, marker
#                  `browser`); Playwright's own browser downloads cannot reach their CDN from here, so the
#                  tests launch Debian's /usr/bin/chromium (override with CHROMIUM_PATH)
#
# Idempotent: a second run checks the commands and does nothing. Prints one line per package.
set -euo pipefail

fail() {
    echo "debian-packages: $*" >&2
    exit 1
}

# package:command pairs
wanted=(spamassassin:spamassassin chromium:chromium)
missing=()
for pair in "${wanted[@]}"; do
    command -v "${pair#*:}" >/dev/null || missing+=("${pair%%:*}")
done

if ((${#missing[@]} > 0)); then
    [[ "$(id -u)" == 0 ]] || fail "${missing[*]} missing; install as root: apt-get install -y ${missing[*]}"
    command -v apt-get >/dev/null || fail "${missing[*]} missing and this machine has no apt-get"
    echo "debian-packages: apt-get install ${missing[*]}" >&2
    # A fresh machine (CI) has no package lists yet: update once and retry before giving up.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
        fail "apt-get install ${missing[*]} failed"
fi

spamassassin --version 2>/dev/null | head -n 1 | sed 's/^/debian-packages: /' ||
    fail "spamassassin does not run"
chromium --version 2>/dev/null | head -n 1 | sed 's/^/debian-packages: /' ||
    fail "chromium does not run"
