#!/usr/bin/env bash
# Installs the tools the benchmarks compare against: wait-on (npm, into benchmarks/node_modules),
# wait-for-it, lsof and iproute2's ss (Debian). Nothing here is needed by the tests.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v wait-for-it >/dev/null || ! command -v lsof >/dev/null || ! command -v ss >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wait-for-it lsof iproute2 >/dev/null
fi
[ -x node_modules/.bin/wait-on ] || npm install --no-audit --no-fund --silent wait-on@9 >/dev/null
echo "benchmark tools ready"
