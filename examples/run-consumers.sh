#!/usr/bin/env bash
# Consumer tests: packs the library, installs the tarball into each consumer app in a temporary folder
# outside the workspace (each app from its own lockfile, no path back into the repository), builds it with
# its own TypeScript and runs examples/smoke.mjs against it:
#   consumer-nest11  Nest 11, CommonJS, per-user SQLite (sqlite3), Express and Fastify
#   consumer-nest12  Nest 12, ESM, PostgreSQL only (sqlite3 absent: the default store must refuse to start,
#                    naming the package), then a copy with sqlite3 added, per-user SQLite; Express and Fastify
# PostgreSQL must answer on 127.0.0.1:5432 (SMOKE_PG_URL to change it). Usage: run-consumers.sh [nest11] [nest12]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/usage-consumers.XXXXXX")
trap 'rm -rf "$work"' EXIT
npm_q=(--no-audit --no-fund --loglevel=error --fetch-retries=5 --fetch-retry-mintimeout=2000)
# retry <command...>: the registry's connection is sometimes dropped mid-download (ECONNRESET); an install
# is retried up to 3 times before the run fails.
retry() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    [ "$attempt" = 3 ] && return 1
    echo "retrying after a failed '$*' (attempt $attempt)" >&2
    sleep $((attempt * 10))
  done
}

npm --prefix "$root" run --silent build:lib
tarball="$work/$(cd "$root/libs/usage-monitoring" && npm pack --silent --pack-destination "$work" | tail -n 1)"
echo "packed $(basename "$tarball") ($(tar -tzf "$tarball" | wc -l) files)"

# prepare <app>: a copy of the app outside the workspace, installed from its lockfile plus the tarball.
prepare() {
  local dir="$work/$1"
  cp -r "$root/examples/$1" "$dir"
  cp -r "$root/examples/app/src" "$dir/src"
  cp "$root/examples/smoke.mjs" "$dir/"
  if grep -rnE "@app/|\.\./libs|usage-monitoring/src" "$dir/src" "$dir/package.json" "$dir/tsconfig.json"; then
    echo "$1 reaches into the workspace instead of using the package" >&2
    return 1
  fi
  local started=$SECONDS
  (cd "$dir" && retry npm ci "${npm_q[@]}" && retry npm install "${npm_q[@]}" "$tarball" && npm run --silent build)
  echo "$1: installed and built in $((SECONDS - started)) s"
}

smoke() { (cd "$work/$1" && shift && node smoke.mjs "$@"); }

# add_sqlite3 <from> <to>: a copy of the prepared app <from> that the user then gave sqlite3
# (`npm install sqlite3`, compiled from source here, about 80 s).
add_sqlite3() {
  local started=$SECONDS
  cp -r "$work/$1" "$work/$2"
  (cd "$work/$2" && retry npm install "${npm_q[@]}" sqlite3@5.1.7)
  echo "$2: sqlite3 added in $((SECONDS - started)) s"
}

# Installs (network, and compiling sqlite3 from source: one core each) run side by side, each logging to its
# own file, printed once all are done; the smoke runs, which time requests, run one at a time afterwards.
install_nest11() { prepare consumer-nest11; }
install_nest12() { prepare consumer-nest12 && add_sqlite3 consumer-nest12 consumer-nest12-sqlite3; }

run_nest11() {
  smoke consumer-nest11 run express sqlite
  smoke consumer-nest11 run fastify sqlite
  smoke consumer-nest11 burst express
}

run_nest12() {
  smoke consumer-nest12 missing-driver sqlite3
  smoke consumer-nest12 run express postgres
  smoke consumer-nest12 run fastify postgres
  smoke consumer-nest12 burst express postgres
  smoke consumer-nest12-sqlite3 run express sqlite
  smoke consumer-nest12-sqlite3 run fastify sqlite
  smoke consumer-nest12-sqlite3 burst fastify
}

# Both apps by default; `run-consumers.sh nest12` runs one.
apps=("$@")
[ ${#apps[@]} -gt 0 ] || apps=(nest11 nest12)
for app in "${apps[@]}"; do
  case "$app" in
    nest11 | nest12) ;;
    *) echo "unknown consumer app: $app (nest11, nest12)" >&2 && exit 2 ;;
  esac
done
started=$SECONDS
pids=()
for app in "${apps[@]}"; do
  ("install_$app" >"$work/install-$app.log" 2>&1) &
  pids+=($!)
done
failed=0
for i in "${!apps[@]}"; do
  status=0
  wait "${pids[$i]}" || status=$?
  cat "$work/install-${apps[$i]}.log"
  if [ "$status" != 0 ]; then
    echo "${apps[$i]}: install failed (exit $status)" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
echo "consumer apps installed in $((SECONDS - started)) s (side by side)"
for app in "${apps[@]}"; do "run_$app"; done
echo "consumer tests passed"
