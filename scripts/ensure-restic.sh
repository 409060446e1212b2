#!/usr/bin/env bash
# Make sure restic is on this machine, for the benchmark's second peer (bench/restic_peer.py:
# restic backing up to `rclone serve restic` on loopback). Idempotent. Installs Debian's
# `restic` package when missing (needs root or sudo); without either, says so and goes on:
# the benchmark then leaves restic's figures out.
set -uo pipefail

command -v restic >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo)
else
  echo "ensure-restic: restic not found and not root: the benchmark leaves it out" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-restic: restic not found and no apt-get: the benchmark leaves it out" >&2
  exit 0
fi
echo "ensure-restic: installing Debian's restic package" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq || true
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends restic >/dev/null \
  || echo "ensure-restic: could not install restic: the benchmark leaves it out" >&2
exit 0
