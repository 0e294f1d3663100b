#!/usr/bin/env bash
# Installs Debian's redis-server for the backplane tests when it is missing and we can (root +
# apt). Only the binary is used: the tests start their own Redis on a free loopback port and
# stop it at the end (the package's own service is not started: no systemd here, and none is
# needed). Where it cannot be installed, the tests that need Redis skip with a reason - except
# under CI=true, where this script fails instead so that CI never passes without running them.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing redis-server (Debian package) for the backplane tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # Debian starts its service when it can; the tests use their own instance.
  if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
  redis-server --version
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  echo "redis-server is missing and cannot be installed (needs root and apt-get)" >&2
  exit 1
fi
echo "note: redis-server is not installed (needs root and apt-get); backplane tests will be skipped"
