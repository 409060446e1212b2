#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl) are on this machine, for the tests
# that run a throwaway cluster (tests/harness/pg.py). Idempotent: does nothing when they are
# already there. Installs Debian's `postgresql` package otherwise (needs root or sudo).
set -euo pipefail

have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_initdb; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "ensure-postgres: initdb not found and not root; install PostgreSQL's server" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-postgres: initdb not found and no apt-get; install PostgreSQL's server" >&2
  exit 1
fi

echo "ensure-postgres: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# The package starts a cluster of its own on port 5432 where a service manager runs; the
# tests never use it, they make their own in a temporary directory.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if ! have_initdb; then
  echo "ensure-postgres: postgresql installed but initdb still not found" >&2
  exit 1
fi
