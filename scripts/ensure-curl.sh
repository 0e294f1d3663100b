#!/usr/bin/env bash
# Installs curl for the tests that run the curl examples of docs/protocol.md, when it is
# missing and we can (root + apt). Where we cannot, those tests skip with a reason - except
# under CI=true, where this script fails instead so that CI never passes without them.
set -euo pipefail
if command -v curl >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing curl (Debian package) for the protocol examples..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends curl >/dev/null
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  echo "curl is missing and cannot be installed (needs root and apt-get)" >&2
  exit 1
fi
echo "note: curl is not installed (needs root and apt-get); the curl examples will be skipped"
